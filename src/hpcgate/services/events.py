"""Job events: what changed between two snapshots of a machine, kept per user and followed.

The monitor hands each successful snapshot to :meth:`EventService.observe`, which compares
it with the last state reported of every job (kept in the store, so a restarted monitor
neither replays old jobs nor misses what ended meanwhile), asks accounting once for every
job that ended since the last probe (those that left the queue, and those that started and
ended between two probes), and appends the events. Submits and kills made through the
gateway report theirs at once (as a :class:`~hpcgate.services.hooks.JobEventSink`). Each
gateway process follows the store's feed once (:class:`EventHub`) and fans events out to
its stream clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hpcgate import metrics
from hpcgate.accounts import UnixAccount
from hpcgate.config import EventsConfig
from hpcgate.contract import data_taken
from hpcgate.errors import GatewayError
from hpcgate.schedulers.base import Ending, JobRecord
from hpcgate.services.hooks import JobEventSink, ProbedMachine
from hpcgate.services.webhooks import Webhooks
from hpcgate.stores.base import StoreUnavailable
from hpcgate.stores.events import (
    TYPE_PREFIX,
    EventStore,
    JobEvent,
    MachineEvents,
    Seen,
    event_order,
)
from hpcgate.stores.snapshot import Survey

log = logging.getLogger(__name__)

ENDED = "ended"
"""The kind of a job's last event when accounting never told how it ended."""
ACCOUNTING_LAG = 60.0  # seconds: each accounting read overlaps the last one by this much
FORGET_REPORTED_AFTER = 3600.0  # seconds a job's final report is remembered, against repeats
FULL_READ_AFTER = 5000  # jobs whose reports may change, past which all are read at once
FULL_READ_EVERY = 60.0  # seconds between whole reads of the reported states regardless
FINISHED_REMEMBERED = 4096  # ended jobs' final records a process keeps in memory
FINISHED_REMEMBERED_SECONDS = 60.0
LATE_READS = (0.3, 0.6)  # pauses before reading accounting again for jobs it lags behind on


def state_word(record: JobRecord) -> str:
    """The bare state word, e.g. ``CANCELLED`` for ``CANCELLED by 1001``."""
    return record.status.upper()


def _exit(code: str) -> tuple[int | None, int | None]:
    first, _, second = code.partition(":")
    return (
        int(first) if first.isdigit() else None,
        int(second) if second.isdigit() else None,
    )


@dataclass(frozen=True)
class EventFilter:
    """Which events a client wants: by machine, job id and kind (all when empty)."""

    machine: str | None = None
    jobid: str | None = None
    kinds: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, machine: str | None, jobid: str | None, types: str | None) -> EventFilter:
        kinds = frozenset(
            kind.strip().removeprefix(TYPE_PREFIX)
            for kind in (types or "").split(",")
            if kind.strip()
        )
        return cls(machine or None, jobid or None, kinds)

    def accepts(self, event: JobEvent) -> bool:
        return (
            (self.machine is None or event.machine == self.machine)
            and (self.jobid is None or event.jobid == self.jobid)
            and (not self.kinds or event.kind in self.kinds)
        )


DROPPED = object()


class Watcher:
    """One client following a user's events: a bounded queue, filled by the hub."""

    def __init__(self, uid: int, wanted: EventFilter, size: int) -> None:
        self.uid = uid
        self.wanted = wanted
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=size + 1)
        self.size = size
        self.dropped = False

    def offer(self, event: JobEvent) -> bool:
        """Queue ``event``; False (and the client is dropped) when the queue is full."""
        if self.dropped or not self.wanted.accepts(event):
            return not self.dropped
        if self.queue.qsize() >= self.size:
            self.dropped = True
            while not self.queue.empty():  # free what it could not read
                self.queue.get_nowait()
            self.queue.put_nowait(DROPPED)
            return False
        self.queue.put_nowait(event)
        return True


class EventHub:
    """One follower of the store's feed per process, fanning events out to watchers."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._watchers: dict[int, set[Watcher]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def watchers(self) -> int:
        return sum(len(group) for group in self._watchers.values())

    async def add(self, watcher: Watcher) -> None:
        """Start passing events to ``watcher``: every event appended after this returns."""
        self._watchers.setdefault(watcher.uid, set()).add(watcher)
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="event-hub")
        await self._ready.wait()

    def remove(self, watcher: Watcher) -> None:
        group = self._watchers.get(watcher.uid)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._watchers[watcher.uid]

    async def _follow(self) -> None:
        cursor: str | None = None
        pause = 0.5
        while True:
            try:
                if cursor is None:
                    cursor = await self.store.feed_cursor()
                    self._ready.set()
                cursor, events = await self.store.follow(cursor, timeout=2.0)
                pause = 0.5
            except StoreUnavailable as exc:  # resume from the same cursor when it is back
                log.warning("cannot follow the job events: %s", exc.message)
                await asyncio.sleep(pause)
                pause = min(5.0, pause * 2)
                continue
            for event in events:
                for watcher in list(self._watchers.get(event.uid, ())):
                    if not watcher.offer(event):
                        log.warning("dropped a slow event stream client of uid %d", event.uid)
                        self.remove(watcher)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@dataclass
class _Round:
    """The events and state changes of one observation of one machine."""

    now: float
    seen: dict[str, Seen]
    changes: dict[str, Seen | None] = field(default_factory=dict)
    events: list[JobEvent] = field(default_factory=list)

    def current(self, jobid: str) -> Seen | None:
        if jobid in self.changes:
            return self.changes[jobid]
        return self.seen.get(jobid)


class _Settled(Container[str]):
    """The jobs whose end is reported and kept (:meth:`EventService._finals` passes them
    over), looked up in a copy's reported states as they are at each lookup."""

    def __init__(self, seen: Mapping[str, Seen]) -> None:
        self.seen = seen

    def __contains__(self, jobid: object) -> bool:
        found = self.seen.get(jobid) if isinstance(jobid, str) else None
        return found is not None and found.final and found.stored


@dataclass(frozen=True)
class AccountingRead:
    """One read of the jobs that ended since ``since`` (None: accounting could not be
    read), begun at ``started``: a monitor makes it while it lists the queue."""

    since: float
    started: float
    endings: list[Ending] | None


Publisher = Callable[[list[JobEvent]], Awaitable[None]]


class EventService(JobEventSink):
    """Makes, keeps and serves job events."""

    def __init__(self, store: EventStore, config: EventsConfig) -> None:
        self.store = store
        self.config = config
        self.hub = EventHub(store)
        self.publishers: list[Publisher] = []
        self.webhooks: Webhooks | None = None
        self.emitted = 0
        self._deliverer: asyncio.Task[None] | None = None
        # machine -> what this process last stored of its jobs' reported states
        self._copies: dict[str, MachineEvents] = {}
        self._read_whole: dict[str, float] = {}  # machine -> when its copy was read whole
        # (machine, job id) -> (until when, final record) of ended jobs read lately
        self._finished: dict[tuple[str, str], tuple[float, list[JobRecord]]] = {}

    def attach(self, webhooks: Webhooks) -> None:
        """Queue webhook deliveries of every event appended here."""
        self.webhooks = webhooks
        self.publishers.append(webhooks.publish)

    # -- making events ------------------------------------------------------------------

    def _event(
        self,
        machine: str,
        seen: Seen,
        kind: str,
        previous: str,
        now: float,
        record: JobRecord | None = None,
        ending: Ending | None = None,
    ) -> JobEvent:
        exit_code, signal = (
            _exit(record.exit_code) if ending is not None and record else (None, None)
        )
        reason = ""
        if ending is not None:
            reason = ending.reason
        elif record is not None and record.nodelist.startswith("("):
            reason = record.nodelist.strip("()")
        data: dict[str, Any] = {
            "machine": machine,
            "jobid": record.id if record is not None else "",
            "user": seen.user,
            "name": seen.name,
            "state": "" if kind == ENDED else seen.state,
            "previous_state": previous,
            "exit_code": exit_code,
            "signal": signal,
            "elapsed": record.elapsed if record is not None else "",
            "reason": reason,
        }
        if ending is not None and ending.ended is not None:
            data["ended"] = data_taken(ending.ended)
        jobid = data["jobid"]
        return JobEvent(seen.uid, machine, jobid, kind, now, data)

    async def read_accounting(
        self, machine: ProbedMachine, account: UnixAccount
    ) -> AccountingRead | None:
        """Read the jobs that ended since the last observation of ``machine``, to be
        handed to :meth:`observe` with the snapshot taken meanwhile (the two reads at once:
        an end is reported one accounting read sooner). None before a first observation."""
        copy = self._copies.get(machine.name)
        since = copy.since if copy is not None else None
        if not self.config.enabled or since is None:
            return None
        started = time.time()
        return AccountingRead(since, started, await self._ended(machine, account, since))

    async def observe(
        self,
        machine: ProbedMachine,
        account: UnixAccount,
        snapshot: Survey,
        accounting: AccountingRead | None = None,
    ) -> list[JobEvent]:
        """Turn a new survey of ``machine`` into events; returns them (stored).
        ``accounting`` is used when it starts where the stored mark says (otherwise
        accounting is read here)."""
        if not self.config.enabled or not snapshot.ok:
            return []
        name = machine.name
        current = {job.id: job for job in snapshot.jobs if job.uid is not None}
        mark = await self.store.accounting_mark(name)
        if accounting is not None and accounting.since == mark:
            started, endings = accounting.started, accounting.endings
        else:  # a first look, or another monitor moved the mark
            started = time.time()
            endings = await self._ended(machine, account, mark or snapshot.taken)
        kept = await self._kept(name, mark, current, endings or [])
        first = kept.since is None  # no observation yet: what is there now is the baseline
        rnd = _Round(snapshot.taken, kept.seen)
        for job in current.values():
            self._compare(name, rnd, job, announce=not first)
        for jobid, seen in kept.seen.items():
            if jobid in current or seen.final or seen.left is not None:
                continue
            if "[" in jobid:  # a pending array's range: its tasks are reported one by one
                rnd.changes[jobid] = None
            else:
                rnd.changes[jobid] = replace(seen, left=rnd.now, at=rnd.now)
        since = None
        if endings is not None:
            since = started
            # on a first look, jobs that ended before are only noted, never reported
            await self._finals(name, rnd, endings, announce=not first)
        self._overdue(name, rnd)
        stored = await self.store.append(rnd.events, name, rnd.changes, since)
        self._stored(kept, rnd.changes, since)
        await self._published(stored)
        if since is not None and not first:  # not when accounting just failed to answer
            stored += await self._late_endings(machine, account, rnd, kept, since)
        return stored

    async def _kept(
        self, name: str, mark: float | None, current: dict[str, JobRecord], endings: list[Ending]
    ) -> MachineEvents:
        """The reported states of ``name``'s jobs: this process's copy, refreshed from the
        store for every job whose report may change now (new or changed in the queue, gone
        from it, or ended; the gateway's own submits and kills are written there). The
        whole of it is read on a first look, or when another monitor moved the mark."""
        copy = self._copies.get(name)
        # Read whole now and then too: a job the gateway reported in another process that
        # neither the queue nor accounting ever names (it ended between two probes while
        # accounting was down; an array's parent id) is found there.
        due = time.monotonic() - self._read_whole.get(name, 0.0) > FULL_READ_EVERY
        if copy is None or copy.since != mark or due:
            return await self._read_copy(name)
        seen = copy.seen
        changing = [
            jobid
            for jobid, job in current.items()
            if (known := seen.get(jobid)) is None or known.state != state_word(job)
        ]
        changing += [
            jobid
            for jobid, known in seen.items()
            if jobid not in current and not known.final and known.left is None
        ]
        changing += [
            ending.job.id
            for ending in endings
            if (known := seen.get(ending.job.id)) is None or not known.final
        ]
        if len(changing) > FULL_READ_AFTER:  # a burst of new jobs: one read of everything
            return await self._read_copy(name)
        seen.update(await self.store.seen_jobs(name, changing))
        return copy

    async def _read_copy(self, name: str) -> MachineEvents:
        copy = self._copies[name] = await self.store.machine_events(name)
        self._read_whole[name] = time.monotonic()
        return copy

    @staticmethod
    def _stored(copy: MachineEvents, changes: dict[str, Seen | None], since: float | None) -> None:
        """Apply to this process's copy what was just stored."""
        for jobid, change in changes.items():
            if change is None:
                copy.seen.pop(jobid, None)
            else:
                copy.seen[jobid] = change
        if since is not None:
            copy.since = since

    async def _late_endings(
        self,
        machine: ProbedMachine,
        account: UnixAccount,
        rnd: _Round,
        kept: MachineEvents,
        since: float,
    ) -> list[JobEvent]:
        """The endings of jobs that left the queue in this round before accounting showed
        them final: accounting is read again shortly (their records are on their way),
        instead of an interval later."""
        waiting = {
            jobid: seen
            for jobid, seen in rnd.changes.items()
            if seen is not None and seen.left == rnd.now and not seen.final
        }
        stored: list[JobEvent] = []
        for pause in LATE_READS:
            if not waiting:
                break
            await asyncio.sleep(pause)
            endings = await self._ended(machine, account, since)
            if endings is None:
                break
            found = [ending for ending in endings if ending.job.id in waiting]
            # the gateway may have reported some meanwhile (a kill): the store says
            fresh = await self.store.seen_jobs(machine.name, [e.job.id for e in found])
            waiting |= fresh
            kept.seen.update(fresh)
            late = _Round(time.time(), waiting)
            await self._finals(machine.name, late, found, announce=True)
            events = await self.store.append(late.events, machine.name, late.changes)
            self._stored(kept, late.changes, None)
            await self._published(events)
            stored += events
            waiting = {
                jobid: seen
                for jobid, seen in waiting.items()
                if jobid not in late.changes and not seen.final
            }
        return stored

    def _compare(self, machine: str, rnd: _Round, job: JobRecord, *, announce: bool) -> None:
        assert job.uid is not None
        word = state_word(job)
        seen = rnd.seen.get(job.id)
        if seen is None:
            seen = Seen(word, job.uid, job.user, job.name, at=rnd.now)
            rnd.changes[job.id] = seen
            if announce:
                rnd.events.append(self._event(machine, seen, word.lower(), "", rnd.now, job))
        elif seen.final:
            return
        elif seen.state != word or seen.left is not None:
            now_seen = replace(seen, state=word, left=None, name=job.name, at=rnd.now)
            rnd.changes[job.id] = now_seen
            if seen.state != word:
                rnd.events.append(
                    self._event(machine, now_seen, word.lower(), seen.state, rnd.now, job)
                )

    async def _ended(
        self, machine: ProbedMachine, account: UnixAccount, since: float
    ) -> list[Ending] | None:
        """Every job that ended since ``since`` (with a margin for accounting's lag), in
        one accounting call; None when accounting could not be read."""
        argv = machine.scheduler.ended_jobs_argv(since - ACCOUNTING_LAG)
        if argv is None:
            return None
        copy = self._copies.get(machine.name)
        settled = _Settled(copy.seen if copy is not None else {})
        try:
            done = await machine.runner.run(account, argv, limits=machine.scheduler_limits)
            # thousands of rows when a large array ends: parsed off the serving event loop
            return await asyncio.to_thread(machine.scheduler.parse_ended_jobs_except, done, settled)
        except GatewayError as exc:
            log.warning("accounting of %s could not be read: %s", machine.name, exc.message)
            return None

    async def _finals(
        self, machine: str, rnd: _Round, endings: list[Ending], *, announce: bool
    ) -> None:
        new: dict[str, tuple[Ending, Seen | None]] = {}  # the first ending of each job
        for ending in endings:
            if ending.job.uid is None or ending.job.id in new:
                continue
            seen = rnd.current(ending.job.id)
            if not (seen is not None and seen.final and seen.stored):
                new[ending.job.id] = (ending, seen)
        stored = False
        if new:
            finished = {jobid: ending.rows for jobid, (ending, _) in new.items()}
            with contextlib.suppress(StoreUnavailable):  # kept at a later read, then
                await self.store.put_finished_many(machine, finished, self.config.finished_ttl)
                stored = True
        for ending, seen in new.values():
            job = ending.job
            assert job.uid is not None
            word = state_word(job)
            final = Seen(word, job.uid, job.user, job.name, final=True, stored=stored, at=rnd.now)
            rnd.changes[job.id] = final
            if (seen is None and announce) or (seen is not None and not seen.final):
                previous = seen.state if seen is not None else ""
                rnd.events.append(
                    self._event(machine, final, word.lower(), previous, rnd.now, job, ending)
                )

    def _overdue(self, machine: str, rnd: _Round) -> None:
        """Jobs that left the queue long ago and that accounting never showed: their last
        event says what is known; and old final reports are forgotten."""
        for jobid in list(rnd.seen) + [j for j in rnd.changes if j not in rnd.seen]:
            seen = rnd.current(jobid)
            if seen is None:
                continue
            if seen.final:
                if rnd.now - seen.at > FORGET_REPORTED_AFTER:
                    rnd.changes[jobid] = None
                continue
            if seen.left is not None and rnd.now - seen.left > self.config.accounting_wait:
                final = replace(seen, final=True, at=rnd.now)
                rnd.changes[jobid] = final
                record = JobRecord(jobid, seen.name, seen.user, "", "", "", 0, None, "", "")
                rnd.events.append(self._event(machine, final, ENDED, seen.state, rnd.now, record))

    async def _published(self, stored: list[JobEvent]) -> None:
        self.emitted += len(stored)
        for event in stored:
            metrics.JOB_EVENTS.labels(event.kind).inc()
        for publish in self.publishers:
            try:
                await publish(stored)
            except StoreUnavailable as exc:
                log.warning("could not queue webhook deliveries: %s", exc.message)

    # -- the machine's hooks ------------------------------------------------------------

    async def submitted(self, machine: str, account: UnixAccount, jobid: str, name: str) -> None:
        if not self.config.enabled:
            return
        try:
            now = time.time()
            seen = Seen("PENDING", account.uid, account.name, name, at=now)
            record = JobRecord(jobid, name, account.name, "PENDING", "", "", 0, None, "", "")
            event = self._event(machine, seen, "pending", "", now, record)
            stored = await self.store.append_first_report(event, machine, jobid, seen)
            if not stored:
                return  # a monitor saw it first
            self._note(machine, jobid, seen)
            await self._published(stored)
        except StoreUnavailable as exc:
            log.warning("could not record the submit of job %s: %s", jobid, exc.message)

    async def cancelled(
        self, machine: str, account: UnixAccount, jobid: str, live: JobRecord
    ) -> None:
        if not self.config.enabled:
            return
        try:
            found = await self.store.seen_jobs(machine, [jobid])
            seen = found.get(jobid)
            if seen is not None and seen.final:
                return
            previous = seen.state if seen is not None else state_word(live)
            now = time.time()
            final = Seen("CANCELLED", account.uid, account.name, live.name, final=True, at=now)
            event = self._event(machine, final, "cancelled", previous, now, live)
            stored = await self.store.append([event], machine, {jobid: final})
            self._note(machine, jobid, final)
            await self._published(stored)
        except StoreUnavailable as exc:
            log.warning("could not record the kill of job %s: %s", jobid, exc.message)

    def _note(self, machine: str, jobid: str, seen: Seen) -> None:
        """Keep a monitor's copy in this process as the store is (other processes' copies
        learn it from the store)."""
        copy = self._copies.get(machine)
        if copy is not None:
            copy.seen[jobid] = seen

    async def finished(self, machine: str, jobid: str) -> list[JobRecord] | None:
        key = (machine, jobid)
        remembered = self._finished.get(key)
        if remembered is not None and remembered[0] > time.monotonic():
            return remembered[1]
        try:
            rows = await self.store.get_finished(machine, jobid)
        except StoreUnavailable:
            return None  # the scheduler answers instead
        if rows:  # a final record does not change: kept here a while, for repeated reads
            self._finished.pop(key, None)
            if len(self._finished) >= FINISHED_REMEMBERED:
                del self._finished[next(iter(self._finished))]  # the oldest
            ttl = min(FINISHED_REMEMBERED_SECONDS, self.config.finished_ttl)
            self._finished[key] = (time.monotonic() + ttl, rows)
        return rows

    # -- reading ------------------------------------------------------------------------

    async def read(
        self, uid: int, after: str | None, wanted: EventFilter, limit: int
    ) -> list[JobEvent]:
        """Up to ``limit`` of the user's kept events after ``after`` that ``wanted`` accepts."""
        found: list[JobEvent] = []
        while len(found) < limit:
            page = await self.store.read(uid, after, 500)
            if not page:
                break
            found += [event for event in page if wanted.accepts(event)]
            after = page[-1].id
        return found[:limit]

    async def follow(
        self, uid: int, after: str | None, wanted: EventFilter
    ) -> tuple[Watcher, list[JobEvent]]:
        """A watcher of the user's new events, and the kept ones after ``after`` (None:
        none, only what comes). Events the backlog holds are skipped by the caller
        with :func:`newer`."""
        watcher = Watcher(uid, wanted, self.config.client_queue)
        await self.hub.add(watcher)
        try:
            backlog = [] if after is None else await self.read(uid, after, wanted, 10**9)
        except BaseException:
            self.hub.remove(watcher)
            raise
        return watcher, backlog

    def start(self, *, deliver: bool) -> None:
        """Start delivering webhooks in this process (when ``deliver``)."""
        if deliver and self.webhooks is not None and self._deliverer is None:
            self._deliverer = asyncio.create_task(self.webhooks.run(), name="webhooks")

    async def close(self) -> None:
        """Stop following, delivering, and close the store."""
        if self._deliverer is not None:
            self._deliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deliverer
            self._deliverer = None
        await self.hub.close()
        await self.store.close()


def newer(event: JobEvent, last: str | None) -> bool:
    """Whether ``event`` comes after the event id ``last``."""
    return last is None or event_order(event.id) > event_order(last)
