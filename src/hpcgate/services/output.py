"""Job output: what a job printed, read at an offset or followed to the job's end.

The output paths come from the controller while it knows the job (expanded as the
scheduler does: :meth:`~hpcgate.schedulers.base.Scheduler.parse_output_paths`) and are
recorded just after submit (one lookup per user for the submits of the last
``BATCH_SECONDS``), and again once complete, so output stays readable after the
controller forgets the job. Only the job's owner may read it, decided on the uid; the
files are then read as that user, through the file service, like any other file.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from hpcgate.accounts import UnixAccount
from hpcgate.errors import BadRequest, Forbidden, GatewayError, NotFound, TimedOut, Unavailable
from hpcgate.schedulers.base import OutputPaths
from hpcgate.services.files import FileService
from hpcgate.services.machine import Machine
from hpcgate.stores.base import OUTPUT_RECORD_TTL, OutputPathStore, OutputRecord

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
POLL_SECONDS = 0.25
"""How often a follower looks at the file's size (a line reaches it within this)."""
STATE_SECONDS = 2.0
"""How often a follower asks the controller whether the job has ended."""
HEARTBEAT_SECONDS = 15.0
BATCH_SECONDS = 0.5
"""Submits of one user within this share one lookup of their output paths."""
BATCH_JOBS = 200
"""Most jobs looked up in one call."""
EVENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class Chunk:
    """Output read at ``offset``: ``data`` (UTF-8 text, whole characters) and where the
    next read starts (``offset + len(data in bytes)``)."""

    path: str
    offset: int
    data: str
    next_offset: int
    size: int
    eof: bool

    def public(self) -> dict[str, object]:
        return {
            "path": self.path,
            "offset": self.offset,
            "data": self.data,
            "size": self.size,
            "eof": self.eof,
            "next_offset": self.next_offset,
        }


def whole_characters(data: bytes, *, final: bool) -> tuple[str, int]:
    """``data`` decoded as UTF-8 up to its last whole character, and the bytes used.

    A read that ends inside a multi-byte character leaves it for the next read, so the
    next offset always starts a character. Undecodable bytes become U+FFFD.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=final)
    left = len(decoder.getstate()[0])
    return text, len(data) - left


class JobOutput:
    """Job output on one machine."""

    def __init__(self, machine: Machine, files: FileService, store: OutputPathStore) -> None:
        self.machine = machine
        self.files = files
        self.store = store
        self._background: set[asyncio.Task[None]] = set()
        self._batches: dict[str, tuple[UnixAccount, list[str]]] = {}

    async def _live(self, account: UnixAccount, jobid: str) -> OutputPaths | None:
        return (await self._live_many(account, [jobid]))[jobid]

    async def _live_many(
        self, account: UnixAccount, jobids: list[str]
    ) -> dict[str, OutputPaths | None]:
        """Each job's output paths as the controller knows them, in one call."""
        scheduler = self.machine.scheduler
        argv = scheduler.output_paths_argv(*jobids)
        if argv is None:
            raise NotFound(f"job output is not available for {self.machine.name}'s scheduler")
        try:
            done = await self.machine.runner.run(
                account, argv, limits=self.machine.scheduler_limits
            )
        except TimedOut:
            raise Unavailable(
                f"the scheduler of {self.machine.name} did not answer in time; try again"
            ) from None
        return scheduler.parse_output_paths_of(jobids, done)

    def submitted(self, account: UnixAccount, jobid: str) -> None:
        """A submit listener of the machine: records the job's output paths in the
        background (the submit's answer does not wait for it), with the user's other
        submits of the next ``BATCH_SECONDS`` in one lookup."""
        batch = self._batches.get(account.name)
        if batch is None or len(batch[1]) >= BATCH_JOBS:
            batch = self._batches[account.name] = (account, [])
            self._in_background(self._record_batch(batch))
        batch[1].append(jobid)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_batch(self, batch: tuple[UnixAccount, list[str]]) -> None:
        account, jobids = batch
        await asyncio.sleep(BATCH_SECONDS)
        if self._batches.get(account.name) is batch:
            del self._batches[account.name]
        await self.record_submitted(account, *jobids)

    async def flush(self) -> None:
        """Wait for the batches under way (at most ``BATCH_SECONDS`` and one lookup), so
        that no job submitted just before a shutdown is left without its record."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def record_submitted(self, account: UnixAccount, *jobids: str) -> None:
        """Record just-submitted jobs' output paths (best effort: logged on failure)."""
        try:
            rows = await self._live_many(account, list(jobids))
            records = {
                jobid: _record_of(row)
                for jobid, row in rows.items()
                if row is not None and row.uid == account.uid
            }
            if records:
                await self.store.put_many(self.machine.name, records, OUTPUT_RECORD_TTL)
        except GatewayError as exc:
            log.warning(
                "output paths of jobs %s on %s not recorded: %s",
                ",".join(jobids),
                self.machine.name,
                exc,
            )

    async def _keep(self, jobid: str, row: OutputPaths) -> OutputRecord:
        record = _record_of(row)
        await self.store.put(self.machine.name, jobid, record, OUTPUT_RECORD_TTL)
        return record

    async def locate(self, account: UnixAccount, jobid: str) -> tuple[OutputRecord, bool]:
        """The job's output record and whether the job has ended; 403 for another
        user's job, 404 when its output path is unknown."""
        kept = await self.store.get(self.machine.name, jobid)
        if kept is not None and kept.uid != account.uid:
            raise Forbidden(f"job {jobid} on {self.machine.name} belongs to another user")
        if kept is not None and kept.ended:
            return kept, True  # final: no need to ask the controller again
        row: OutputPaths | None = None
        try:
            row = await self._live(account, jobid)
        except GatewayError:
            if kept is None or not kept.complete:
                raise
        if row is not None:
            if row.uid != account.uid:
                raise Forbidden(f"job {jobid} on {self.machine.name} belongs to another user")
            if kept is None or not kept.complete or (row.ended and not kept.ended):
                kept = await self._keep(jobid, row)
            return kept, row.ended
        if kept is None:
            raise NotFound(
                f"the output path of job {jobid} on {self.machine.name} is unknown: the "
                "controller no longer knows the job (or never did), and the gateway did not "
                "record it at submit"
            )
        return kept, True  # the controller forgot it: it ended long ago

    async def read(
        self, account: UnixAccount, jobid: str, stream: str, offset: int, max_bytes: int
    ) -> Chunk:
        """Up to ``max_bytes`` of the job's ``stream`` from ``offset``."""
        record, ended = await self.locate(account, jobid)
        return await self._read(account, _path(record, stream), offset, max_bytes, ended)

    async def _read(
        self, account: UnixAccount, path: str, offset: int, max_bytes: int, ended: bool
    ) -> Chunk:
        try:
            entry = await self.files.regular_file(account, path)
        except NotFound:
            if ended:
                raise NotFound(f"job output file {path} does not exist") from None
            return Chunk(path, offset, "", offset, 0, False)  # not started yet
        size = entry.size
        length = max(0, min(max_bytes, size - offset))
        data = b""
        if length:
            parts = [
                part async for part in self.files.read(account, path, offset=offset, length=length)
            ]
            data = b"".join(parts)
        at_end = offset + len(data) >= size
        text, used = whole_characters(data, final=ended and at_end)
        next_offset = offset + used
        return Chunk(path, offset, text, next_offset, size, ended and next_offset >= size)

    async def follow(
        self, account: UnixAccount, jobid: str, stream: str, offset: int
    ) -> AsyncIterator[bytes]:
        """Server-Sent Events of the job's ``stream`` from ``offset`` to the job's end.

        Checks access before the first event, so an error is an ordinary answer.
        """
        record, ended = await self.locate(account, jobid)
        path = _path(record, stream)
        return self._events(account, jobid, path, offset, ended)

    async def _events(
        self, account: UnixAccount, jobid: str, path: str, offset: int, ended: bool
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        next_state = loop.time() + STATE_SECONDS
        last_sent = loop.time()
        yield b"retry: 1000\n\n"
        while True:
            was_ended = ended
            try:
                chunk = await self._read(account, path, offset, EVENT_BYTES, ended)
            except NotFound:  # the job ended without ever writing it
                chunk = Chunk(path, offset, "", offset, 0, True)
            if chunk.next_offset > offset:
                payload = orjson.dumps({"offset": offset, "data": chunk.data, "size": chunk.size})
                offset = chunk.next_offset
                yield b"id: %d\nevent: output\ndata: %s\n\n" % (offset, payload)
                last_sent = loop.time()
                continue  # more may be there already
            if chunk.eof or (was_ended and chunk.next_offset >= chunk.size):
                payload = orjson.dumps({"offset": offset, "size": chunk.size})
                yield b"id: %d\nevent: eof\ndata: %s\n\n" % (offset, payload)
                return
            now = loop.time()
            if now >= next_state and not ended:
                next_state = now + STATE_SECONDS
                ended = await self._ended(account, jobid)
                if ended:
                    continue  # one more read: what was written last
            if now - last_sent >= HEARTBEAT_SECONDS:
                yield b": keep-alive\n\n"
                last_sent = now
            await asyncio.sleep(POLL_SECONDS)

    async def _ended(self, account: UnixAccount, jobid: str) -> bool:
        try:
            row = await self._live(account, jobid)
        except GatewayError as exc:
            log.info("job %s on %s: state unknown for now: %s", jobid, self.machine.name, exc)
            return False
        return row is None or row.ended


def _path(record: OutputRecord, stream: str) -> str:
    if stream not in STREAMS:
        raise BadRequest("stream must be stdout or stderr")
    return record.stdout if stream == "stdout" else record.stderr


def _record_of(row: OutputPaths) -> OutputRecord:
    """What is kept of a job's output paths as the controller told them."""
    return OutputRecord(
        uid=row.uid,
        user=row.user,
        stdout=row.stdout,
        stderr=row.stderr,
        complete=row.complete,
        ended=row.ended and row.complete,
    )
