"""Stores inside one gateway process: the embedded default, with the monitors in-process."""

from __future__ import annotations

import time
from collections.abc import Iterable

from hpcgate.stores.base import (
    IdempotencyRecord,
    IdempotencyStore,
    Session,
    SessionStore,
    StatusStore,
    Stores,
    digest,
    new_session,
)
from hpcgate.stores.output_paths import MemoryOutputPaths
from hpcgate.stores.snapshot import OwnJobs, Snapshot, Survey


class MemoryStore(StatusStore):
    """Snapshots inside one process: monitors and the API share them directly."""

    def __init__(self) -> None:
        self._snapshots: dict[str, tuple[Snapshot, float]] = {}
        self._surveys: dict[str, Survey] = {}
        self._writes: dict[tuple[str, str], tuple[float, float]] = {}

    async def put(self, snapshot: Snapshot, ttl: float) -> None:
        machine = snapshot.machine
        if isinstance(snapshot, Survey):
            self._surveys[machine] = snapshot
        elif (await self.get(machine)) is None:
            self._surveys.pop(machine, None)  # expired: a failed probe does not revive it
        self._snapshots[machine] = (snapshot.head(), time.monotonic() + ttl)

    async def get_many(self, machines: Iterable[str]) -> dict[str, Snapshot | None]:
        now = time.monotonic()
        found: dict[str, Snapshot | None] = {}
        for machine in machines:
            entry = self._snapshots.get(machine)
            found[machine] = entry[0] if entry and entry[1] > now else None
        return found

    async def jobs_of(self, machine: str, uid: int) -> OwnJobs | None:
        if (await self.get(machine)) is None:
            self._surveys.pop(machine, None)  # expired with its snapshot
            return None
        survey = self._surveys.get(machine)
        return survey.jobs_of(uid) if survey is not None else None

    async def note_write(self, machine: str, user: str, when: float, ttl: float) -> None:
        self._writes[(machine, user)] = (when, time.monotonic() + ttl)

    async def last_write(self, machine: str, user: str) -> float | None:
        entry = self._writes.get((machine, user))
        if entry is None or entry[1] <= time.monotonic():
            self._writes.pop((machine, user), None)
            return None
        return entry[0]


class MemorySessionStore(SessionStore):
    """Sessions inside one gateway process."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    async def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        self._purge()
        token, key, session = new_session(username, lifetime)
        self._sessions[key] = session
        return token, session

    async def get(self, token: str) -> Session | None:
        key = digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= time.time():
            del self._sessions[key]
            return None
        return session

    async def delete(self, token: str) -> bool:
        return self._sessions.pop(digest(token), None) is not None

    def _purge(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]


class MemoryIdempotencyStore(IdempotencyStore):
    """Idempotency records for one gateway process, lost when it ends (the embedded
    family keeps them in SQLite instead: :mod:`hpcgate.stores.sqlite`)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[IdempotencyRecord, float]] = {}
        self._created = time.time()

    def _live(self, key: str) -> IdempotencyRecord | None:
        entry = self._records.get(key)
        if entry is None or entry[1] <= time.monotonic():
            self._records.pop(key, None)
            return None
        return entry[0]

    async def claim(
        self, key: str, record: IdempotencyRecord, ttl: float
    ) -> IdempotencyRecord | None:
        existing = self._live(key)
        if existing is None:
            self._records[key] = (record, time.monotonic() + ttl)
        return existing

    async def get(self, key: str) -> IdempotencyRecord | None:
        return self._live(key)

    async def put(self, key: str, record: IdempotencyRecord, ttl: float) -> None:
        self._records[key] = (record, time.monotonic() + ttl)

    async def delete(self, key: str) -> None:
        self._records.pop(key, None)

    async def swap(
        self, key: str, expected: IdempotencyRecord, record: IdempotencyRecord, ttl: float
    ) -> bool:
        if self._live(key) != expected:
            return False
        self._records[key] = (record, time.monotonic() + ttl)
        return True

    async def kept_since(self) -> float:
        return self._created  # everything before this process started is forgotten


def memory_stores() -> Stores:
    """The embedded family: everything in this process."""
    return Stores(
        MemoryStore(), MemorySessionStore(), MemoryIdempotencyStore(), MemoryOutputPaths()
    )
