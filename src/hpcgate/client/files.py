"""Files and job output in the client: list, download, upload, read, remove, mkdir, and a
job's output, read or followed. Transfers stream to and from local files in blocks, so a
file of any size is moved in constant memory on this side too.

:class:`FileMethods` and :class:`AsyncFileMethods` are mixed into
:class:`~hpcgate.client.Client` and :class:`~hpcgate.client.AsyncClient`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx

from hpcgate.client import calls

T = TypeVar("T")
BLOCK = 1024 * 1024
Progress = Callable[[int, int | None], None]
"""Called as a transfer advances with (bytes done, total bytes or None)."""


@dataclass(frozen=True)
class FileEntry:
    """A directory entry on a machine (NEWT's fields)."""

    name: str
    type: str
    """file, dir, link or other."""
    perms: str
    hardlinks: int
    user: str
    group: str
    size: int
    date: str
    """The mtime, ISO 8601 UTC."""
    symlink: str

    @classmethod
    def from_output(cls, entry: dict[str, Any]) -> FileEntry:
        return cls(
            name=str(entry["name"]),
            type=str(entry["type"]),
            perms=str(entry["perms"]),
            hardlinks=int(entry["hardlinks"]),
            user=str(entry["user"]),
            group=str(entry["group"]),
            size=int(entry["size"]),
            date=str(entry["date"]),
            symlink=str(entry["symlink"]),
        )


@dataclass(frozen=True)
class JobOutput:
    """Part of what a job printed: ``data`` from ``offset``; read on from ``next_offset``."""

    path: str
    offset: int
    data: str
    size: int
    eof: bool
    next_offset: int


def file_path(machine: str, path: str) -> str:
    """The route of ``path`` (absolute, or ``~/...``) on ``machine``."""
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise ValueError(f"give an absolute path or one under ~/, not {path!r}")
    return f"/file/{machine}/{quote(path.lstrip('/'), safe='/~')}"


def _listing(machine: str, path: str, offset: int) -> calls.Call[tuple[list[FileEntry], int]]:
    def parse(answer: tuple[list[Any], int]) -> tuple[list[FileEntry], int]:
        entries, total = answer  # a file: its own entry, and a total of 1
        return [FileEntry.from_output(entry) for entry in entries], total

    return calls.Call(
        "GET",
        file_path(machine, path),
        parse,
        params={"offset": str(offset)},
        idempotent=True,
        paged=True,
    )


def _remove(machine: str, path: str, recursive: bool) -> calls.Call[None]:
    params = {"recursive": "true"} if recursive else None
    return calls.Call("DELETE", file_path(machine, path), lambda out: None, params=params)


def _mkdir(machine: str, path: str, parents: bool) -> calls.Call[None]:
    data = {"op": "mkdir", "parents": "true" if parents else "false"}
    return calls.Call("POST", file_path(machine, path), lambda out: None, data=data)


def _output(machine: str, jobid: str, stream: str, offset: int) -> calls.Call[JobOutput]:
    return calls.Call(
        "GET",
        f"/job/{machine}/{jobid}/output",
        lambda out: JobOutput(**{key: out[key] for key in JobOutput.__dataclass_fields__}),
        params={"stream": stream, "offset": str(offset)},
        idempotent=True,
    )


def sha256_of(source: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _upload_headers(source: Path, overwrite: bool, checksum: bool) -> dict[str, str]:
    headers = {"Content-Length": str(source.stat().st_size)}
    if not overwrite:
        headers["If-None-Match"] = "*"
    if checksum:
        headers["X-Checksum-Sha256"] = sha256_of(source)
    return headers


def _failed(response: httpx.Response) -> None:
    """Raise the client error for a failed streamed answer (its body already read)."""
    calls.output_of(response)


class _EventLines:
    """Server-Sent Events parsed line by line: ``feed`` returns (id, event, data) when a
    line ends an event."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def feed(self, line: str) -> tuple[str, str, dict[str, Any]] | None:
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                self.fields[name] = value.removeprefix(" ")
            return None
        fields, self.fields = self.fields, {}
        if "data" not in fields:
            return None
        return fields.get("id", ""), fields.get("event", ""), json.loads(fields["data"])


class FileMethods:
    """File and job output methods of :class:`~hpcgate.client.Client`."""

    _http: httpx.Client

    if TYPE_CHECKING:  # provided by Client, which mixes this class in

        def _send(self, call: calls.Call[T]) -> T: ...

    def list(self, machine: str, path: str) -> list[FileEntry]:
        """A directory's entries sorted by name (every page), or a file's own entry."""
        entries: list[FileEntry] = []
        while True:
            page, total = self._send(_listing(machine, path, len(entries)))
            entries += page
            if not page or len(entries) >= total:
                return entries

    def download(
        self, machine: str, path: str, destination: str | Path, *, progress: Progress | None = None
    ) -> int:
        """Stream the file at ``path`` into the local file ``destination`` (replaced only
        when complete); returns its size."""
        target = Path(destination)
        partial = target.with_name(f".{target.name}.part")
        done = 0
        with self._http.stream(
            "GET", file_path(machine, path), params={"view": "read"}, timeout=_transfer_timeout()
        ) as response:
            if response.status_code != 200:
                response.read()
                _failed(response)
            total = int(response.headers.get("content-length", 0)) or None
            try:
                with partial.open("wb") as file:
                    for block in response.iter_bytes(BLOCK):
                        file.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                if total is not None and done != total:
                    raise OSError(f"the download of {path} stopped at {done} of {total} bytes")
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
        return done

    def read(self, machine: str, path: str) -> Iterator[bytes]:
        """The file's bytes, streamed (for ``cat``-like use)."""
        with self._http.stream(
            "GET", file_path(machine, path), params={"view": "read"}, timeout=_transfer_timeout()
        ) as response:
            if response.status_code != 200:
                response.read()
                _failed(response)
            yield from response.iter_bytes(BLOCK)

    def upload(
        self,
        machine: str,
        source: str | Path,
        path: str,
        *,
        overwrite: bool = True,
        checksum: bool = True,
        progress: Progress | None = None,
    ) -> int:
        """Stream the local file ``source`` to ``path`` on the machine; returns its size.

        With ``checksum`` the gateway verifies the SHA-256 before the file appears (the
        file is read twice here); ``overwrite=False`` refuses to replace a file.
        """
        local = Path(source)
        headers = _upload_headers(local, overwrite, checksum)
        total = int(headers["Content-Length"])

        def body() -> Iterator[bytes]:
            done = 0
            with local.open("rb") as file:
                while block := file.read(BLOCK):
                    done += len(block)
                    yield block
                    if progress is not None:
                        progress(done, total)

        response = self._http.put(
            file_path(machine, path), content=body(), headers=headers, timeout=_transfer_timeout()
        )
        return int(calls.output_of(response)["size"])

    def remove(self, machine: str, path: str, *, recursive: bool = False) -> None:
        """Remove a file (a directory with ``recursive``)."""
        self._send(_remove(machine, path, recursive))

    def mkdir(self, machine: str, path: str, *, parents: bool = False) -> None:
        """Make a directory (and its parents with ``parents``)."""
        self._send(_mkdir(machine, path, parents))

    def job_output(
        self, machine: str, jobid: str, *, stream: str = "stdout", offset: int = 0
    ) -> JobOutput:
        """What the job printed from ``offset`` (up to 1 MiB); ``eof`` once it ended and
        everything was read."""
        return self._send(_output(machine, str(jobid), stream, offset))

    def follow_output(
        self, machine: str, jobid: str, *, stream: str = "stdout", offset: int = 0
    ) -> Iterator[str]:
        """The job's output as it is written, until the job ends; reconnects (resuming at
        the last offset) after a dropped connection."""
        attempt = 0
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/job/{machine}/{jobid}/output",
                    params={"stream": stream},
                    headers={"Accept": "text/event-stream", "Last-Event-ID": str(offset)},
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        _failed(response)
                    parser = _EventLines()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        event_id, kind, data = event
                        if kind == "eof":
                            return
                        offset = int(event_id)
                        attempt = 0
                        yield str(data["data"])
            except httpx.TransportError:
                if attempt >= 5:
                    raise
            time.sleep(min(8.0, 0.5 * 2**attempt))
            attempt += 1


class AsyncFileMethods:
    """File and job output methods of :class:`~hpcgate.client.AsyncClient`."""

    _http: httpx.AsyncClient

    if TYPE_CHECKING:  # provided by AsyncClient, which mixes this class in

        async def _send(self, call: calls.Call[T]) -> T: ...

    async def list(self, machine: str, path: str) -> list[FileEntry]:
        entries: list[FileEntry] = []
        while True:
            page, total = await self._send(_listing(machine, path, len(entries)))
            entries += page
            if not page or len(entries) >= total:
                return entries

    async def download(
        self, machine: str, path: str, destination: str | Path, *, progress: Progress | None = None
    ) -> int:
        target = Path(destination)
        partial = target.with_name(f".{target.name}.part")
        done = 0
        async with self._http.stream(
            "GET", file_path(machine, path), params={"view": "read"}, timeout=_transfer_timeout()
        ) as response:
            if response.status_code != 200:
                await response.aread()
                _failed(response)
            total = int(response.headers.get("content-length", 0)) or None
            try:
                with partial.open("wb") as file:
                    async for block in response.aiter_bytes(BLOCK):
                        await asyncio.to_thread(file.write, block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                if total is not None and done != total:
                    raise OSError(f"the download of {path} stopped at {done} of {total} bytes")
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
        return done

    async def read(self, machine: str, path: str) -> AsyncIterator[bytes]:
        async with self._http.stream(
            "GET", file_path(machine, path), params={"view": "read"}, timeout=_transfer_timeout()
        ) as response:
            if response.status_code != 200:
                await response.aread()
                _failed(response)
            async for block in response.aiter_bytes(BLOCK):
                yield block

    async def upload(
        self,
        machine: str,
        source: str | Path,
        path: str,
        *,
        overwrite: bool = True,
        checksum: bool = True,
        progress: Progress | None = None,
    ) -> int:
        local = Path(source)
        headers = await asyncio.to_thread(_upload_headers, local, overwrite, checksum)
        total = int(headers["Content-Length"])

        async def body() -> AsyncIterator[bytes]:
            done = 0
            with local.open("rb") as file:
                while block := await asyncio.to_thread(file.read, BLOCK):
                    done += len(block)
                    yield block
                    if progress is not None:
                        progress(done, total)

        response = await self._http.put(
            file_path(machine, path), content=body(), headers=headers, timeout=_transfer_timeout()
        )
        return int(calls.output_of(response)["size"])

    async def remove(self, machine: str, path: str, *, recursive: bool = False) -> None:
        await self._send(_remove(machine, path, recursive))

    async def mkdir(self, machine: str, path: str, *, parents: bool = False) -> None:
        await self._send(_mkdir(machine, path, parents))

    async def job_output(
        self, machine: str, jobid: str, *, stream: str = "stdout", offset: int = 0
    ) -> JobOutput:
        return await self._send(_output(machine, str(jobid), stream, offset))

    async def follow_output(
        self, machine: str, jobid: str, *, stream: str = "stdout", offset: int = 0
    ) -> AsyncIterator[str]:
        attempt = 0
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    f"/job/{machine}/{jobid}/output",
                    params={"stream": stream},
                    headers={"Accept": "text/event-stream", "Last-Event-ID": str(offset)},
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        _failed(response)
                    parser = _EventLines()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        event_id, kind, data = event
                        if kind == "eof":
                            return
                        offset = int(event_id)
                        attempt = 0
                        yield str(data["data"])
            except httpx.TransportError:
                if attempt >= 5:
                    raise
            await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
            attempt += 1


def _transfer_timeout() -> httpx.Timeout:
    # a large transfer may take hours; what matters is that bytes keep moving
    return httpx.Timeout(60.0, read=float(os.environ.get("HPCGATE_TRANSFER_IDLE", "300")))
