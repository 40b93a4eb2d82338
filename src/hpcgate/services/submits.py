"""Idempotent submits: a retried ``POST /api/job`` with the same ``Idempotency-Key``
returns the first job's id and submits nothing, across restarts and outages.

Two records are kept of every keyed submit:

- the store's: the first request claims the key atomically (``INSERT OR IGNORE`` in the
  embedded SQLite file, ``SET NX`` in Redis) with a *pending* record that says when and
  by which gateway process the attempt began, then writes the job id (*done*);
- the scheduler's: the job is submitted with a tag, a digest of (user, machine, key,
  request) that the scheduler keeps with it (Slurm: ``--comment=hpcgate:<hex>``).

A retry with the same key and body gets the recorded id. When the record cannot say (it
is pending in a process that died, or *unknown* because the scheduler gave no clear
answer, or missing because the store lost it), the retry looks the tag up among the
user's jobs, as the user: found, that id is returned and recorded; not found once the
first attempt is certainly over, the key is free and the retry submits. A first attempt
is cut at ``wait`` seconds (whatever it waits for: a connection, a session, a slow home
directory), and counts as over ``SETTLE`` seconds later, so that a submit the scheduler
received just before the cut shows up in the lookup first. When the attempt's process
was on this host and is gone (a gateway killed and restarted), and the runner has ended
what it left running, the attempt is over ``SETTLE`` seconds after that, without waiting
for the cut. A definite failure (a 4xx, or a 503 that certainly sent nothing, e.g.
sbatch could not connect to the controller) frees the key at once. The same key with
another body is a 409. Keys are per user and machine, and expire after ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TypeVar

from hpcgate import metrics
from hpcgate.errors import BadRequest, Conflict, GatewayError, TimedOut, Unavailable
from hpcgate.jobspec import Submission
from hpcgate.process import Completed
from hpcgate.schedulers.base import Scheduler
from hpcgate.stores.base import (
    DONE,
    PENDING,
    UNKNOWN,
    IdempotencyRecord,
    IdempotencyStore,
)

MAX_KEY_LENGTH = 255
TAG_PREFIX = "hpcgate:"
LOOKUP_INTERVAL = 1.0  # seconds between tag lookups of one waiting retry
T = TypeVar("T")
SETTLE = 5.0  # seconds after a first attempt is cut before its job must be visible

Submit = Callable[[str], Awaitable[str]]
"""Submits the job with the given tag; returns its id."""
Finder = Callable[[str, float], Awaitable[str | None]]
"""The id of the user's job carrying a tag, submitted in the last so many seconds."""
EndActions = Callable[[int], bool]
"""Ends what a gone gateway process (by pid, on this host) left running; True when none
of its actions can still run (:meth:`hpcgate.runners.base.Runner.end_actions_of`)."""


def _process_space() -> str:
    """What makes a pid name the same process: this kernel's boot and pid namespace
    ('' when unknown: then no record is taken for this host's)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


PROCESS_SPACE = _process_space()


def _host() -> str:
    return socket.gethostname().replace(":", "_")


def local_pid(owner: str) -> int | None:
    """The pid of the gateway process ``owner`` names when it ran on this host, in this
    pid namespace; None for any other (another host, container or boot)."""
    host, pid, _, space = [*owner.split(":"), "", "", "", ""][:4]
    if not PROCESS_SPACE or space != PROCESS_SPACE or host != _host():
        return None
    return int(pid) if pid.isdigit() else None


class _Cut(TimedOut):
    """A first attempt cut at the attempt limit (504): the job may exist."""


class NothingSubmitted(Unavailable):
    """A submit that failed before anything reached the scheduler (503): its key is freed."""


def fingerprint(machine: str, submission: Submission) -> str:
    """A digest of what was asked, validated, to tell a true retry from a reused key."""
    asked = asdict(submission)
    asked["options"].pop("tag", None)
    canonical = json.dumps([machine, asked], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_tag(user: str, machine: str, key: str, digest: str) -> str:
    """The mark a keyed submit leaves on its job: 128 bits of (user, machine, key, request)."""
    material = json.dumps([user, machine, key, digest]).encode()
    return TAG_PREFIX + hashlib.sha256(material).hexdigest()[:32]


def tagged(submission: Submission, tag: str) -> Submission:
    """``submission`` to be submitted with ``tag``."""
    return replace(submission, options=replace(submission.options, tag=tag))


def tag_finder(
    scheduler: Scheduler, schedule: Callable[[list[str]], Awaitable[Completed]], user: str
) -> Finder | None:
    """Looks up ``user``'s jobs by tag through ``schedule`` (which runs an argv as the
    user); None when the scheduler keeps no tags."""
    if not scheduler.tagged_jobs_argvs(user, 0):
        return None

    async def find(tag: str, within: float) -> str | None:
        for argv in scheduler.tagged_jobs_argvs(user, within):
            found = scheduler.parse_tagged_jobs(await schedule(argv), tag)
            if found:
                return found[0]
        return None

    return find


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters, e.g. a UUID"
        )
    return key


class IdempotentSubmits:
    """Runs a submit at most once per (user, machine, key)."""

    def __init__(self, store: IdempotencyStore, ttl: float, wait: float) -> None:
        self.store = store
        self.ttl = ttl
        self.wait = wait
        """Longest a first attempt may run (its lookup, script write and submit, with
        their limits); it is cut there, and a retry waits for it that long plus SETTLE."""
        self.settle = SETTLE
        token = secrets.token_hex(4)
        self.owner = f"{_host()}:{os.getpid()}:{token}:{PROCESS_SPACE}"
        self._running: dict[str, asyncio.Event] = {}  # slots whose attempt runs here
        self._finished: dict[str, float] = {}  # slots whose attempt here ended, and when
        self._ended: dict[tuple[str, EndActions], float] = {}  # gone owners: actions ended at

    def _pending(self, digest: str) -> IdempotencyRecord:
        return IdempotencyRecord(digest, PENDING, claimed=time.time(), owner=self.owner)

    async def submit(
        self,
        user: str,
        machine: str,
        key: str,
        digest: str,
        submit: Submit,
        find: Finder | None = None,
        end_actions: EndActions | None = None,
    ) -> str:
        """Submit once per (user, machine, key): ``submit`` runs the attempt, ``find``
        looks a tag up among the user's jobs, ``end_actions`` ends what a gone gateway
        process of this host left running on the machine (its runner's)."""
        slot = f"{user}:{machine}:{check_key(key)}"
        tag = submit_tag(user, machine, key, digest)
        mine = self._pending(digest)
        existing = await self.store.claim(slot, mine, self.ttl)
        if existing is None:
            return await self._first(slot, mine, tag, submit, find, look_first=True)
        return await self._retry(slot, digest, existing, tag, submit, find, end_actions)

    async def _first(
        self,
        slot: str,
        mine: IdempotencyRecord,
        tag: str,
        submit: Submit,
        find: Finder | None,
        *,
        look_first: bool,
    ) -> str:
        """Submit under the claim ``mine``; with ``look_first``, when the store may have
        lost an earlier record of this key, look for that attempt's job first."""
        running = self._running[slot] = asyncio.Event()
        try:
            if look_first and find is not None and await self._may_have_lost_records():
                try:
                    found = await self._within_cut(mine, find(tag, self.ttl))
                except BaseException as exc:
                    await self.store.delete(slot)  # nothing was submitted
                    if isinstance(exc, _Cut):
                        raise Unavailable(
                            "looking for an earlier attempt of this Idempotency-Key took "
                            "too long; nothing was submitted: try again"
                        ) from exc
                    raise
                if found is not None:
                    await self.store.put(slot, replace(mine, state=DONE, jobid=found), self.ttl)
                    return found
            return await self._submit(slot, mine, tag, submit)
        finally:
            self._note_finished(slot)
            running.set()
            if self._running.get(slot) is running:
                del self._running[slot]

    def _note_finished(self, slot: str) -> None:
        now = time.time()
        self._finished[slot] = now
        if len(self._finished) > 1000:  # only the last ``settle`` seconds matter
            for old in [key for key, at in self._finished.items() if at < now - self.settle]:
                del self._finished[old]

    async def _within_cut(self, mine: IdempotencyRecord, work: Awaitable[T]) -> T:
        """``work``, cut ``wait`` seconds after ``mine`` was claimed (raises _Cut)."""
        loop = asyncio.get_running_loop()
        cut = asyncio.timeout_at(loop.time() + max(0.0, mine.claimed + self.wait - time.time()))
        try:
            async with cut:
                return await work
        except TimeoutError as exc:
            if not cut.expired():
                raise
            raise _Cut(
                f"the submit took longer than {self.wait:g} s and was cut; the job may "
                "exist: retry with the same Idempotency-Key to learn its id"
            ) from exc

    async def _submit(self, slot: str, mine: IdempotencyRecord, tag: str, submit: Submit) -> str:
        try:
            jobid = await self._within_cut(mine, submit(tag))
        except GatewayError as exc:
            if exc.status_code < 500 or isinstance(exc, NothingSubmitted):
                await self.store.delete(slot)  # certainly nothing exists: the key is free
            else:  # unreachable, timed out or cut: the job may exist
                await self.store.put(slot, replace(mine, state=UNKNOWN), self.ttl)
            raise
        except BaseException:  # cancelled, or a bug: the job may exist all the same
            await self.store.put(slot, replace(mine, state=UNKNOWN), self.ttl)
            raise
        # outside the cut: the job exists, and its id is what the client gets
        await self.store.put(slot, replace(mine, state=DONE, jobid=jobid), self.ttl)
        return jobid

    async def _may_have_lost_records(self) -> bool:
        return await self.store.kept_since() > time.time() - self.ttl

    def _over_here(self, slot: str, owner: str) -> bool:
        """Whether the attempt was this process's and ended ``settle`` seconds ago (so
        that a job its sbatch sent just before a cut or a timeout shows up first)."""
        if owner != self.owner:
            return False
        finished = self._finished.get(slot)
        return finished is None or time.time() > finished + self.settle

    def _gone_and_ended(self, owner: str, end_actions: EndActions | None) -> bool:
        """Whether the attempt's process was on this host, is gone, and had what it left
        running through this machine's runner ended at least ``settle`` seconds ago."""
        pid = local_pid(owner)
        if end_actions is None or pid is None or pid == os.getpid():
            return False
        key = (owner, end_actions)  # the owner names one process; each machine its runner
        ended = self._ended.get(key)
        if ended is None:
            if not end_actions(pid):
                return False
            ended = self._ended[key] = time.time()
        return time.time() > ended + self.settle

    async def _retry(
        self,
        slot: str,
        digest: str,
        record: IdempotencyRecord | None,
        tag: str,
        submit: Submit,
        find: Finder | None,
        end_actions: EndActions | None = None,
    ) -> str:
        deadline = time.monotonic() + self.wait + self.settle + 2 * LOOKUP_INTERVAL
        next_lookup = 0.0
        while True:
            if record is None:  # freed (a definite failure) or expired: claim it again
                mine = self._pending(digest)
                record = await self.store.claim(slot, mine, self.ttl)
                if record is None:
                    return await self._first(slot, mine, tag, submit, find, look_first=True)
                continue
            if record.fingerprint != digest:
                raise Conflict(
                    "this Idempotency-Key was used for a different request; "
                    "use a new key for a new job"
                )
            if record.state == DONE:
                metrics.IDEMPOTENT_REPLAYS.inc()
                return record.jobid
            running_here = self._running.get(slot)
            if record.owner == self.owner and running_here is not None:
                await asyncio.shield(running_here.wait())  # ends within the submit's limits
            elif find is not None:
                cut_long_ago = time.time() > record.claimed + self.wait + self.settle
                over = (
                    self._over_here(slot, record.owner)
                    or cut_long_ago
                    or self._gone_and_ended(record.owner, end_actions)
                )
                if over or time.monotonic() >= next_lookup:
                    next_lookup = time.monotonic() + LOOKUP_INTERVAL
                    found = await find(tag, self.ttl)
                    if found is not None:
                        done = replace(record, state=DONE, jobid=found)
                        if await self.store.swap(slot, record, done, self.ttl):
                            return found
                    elif over:  # the first attempt is over and made no job: the key is free
                        mine = self._pending(digest)
                        if await self.store.swap(slot, record, mine, self.ttl):
                            return await self._first(
                                slot, mine, tag, submit, find, look_first=False
                            )
                    else:
                        await asyncio.sleep(0.05)
                    record = await self.store.get(slot)
                    continue
            elif record.state == UNKNOWN:
                raise Conflict(
                    "the first request with this Idempotency-Key ended without a "
                    "clear answer from the scheduler: the job may exist; check "
                    "your queue before submitting again with a new key"
                )
            if time.monotonic() > deadline:
                raise Unavailable(
                    "the first request with this Idempotency-Key is still "
                    "running; try again shortly"
                )
            await asyncio.sleep(0.05)
            record = await self.store.get(slot)
