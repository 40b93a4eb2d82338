"""Where monitors put snapshots and API processes read them.

Two implementations: :class:`MemoryStore` for one process (the embedded default) and
:class:`~hpcgate.status.redis_store.RedisStore` for several API processes and monitors on
one or more hosts. Every method may raise :class:`StoreUnavailable`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable

from hpcgate.errors import Unavailable
from hpcgate.status.snapshot import Snapshot


class StoreUnavailable(Unavailable):
    """The store cannot be reached (503)."""


class StatusStore(ABC):
    """Snapshots by machine, and the time each user last changed their queue."""

    @abstractmethod
    async def put(self, snapshot: Snapshot, ttl: float) -> None:
        """Replace the machine's snapshot atomically; it disappears after ``ttl`` seconds."""

    @abstractmethod
    async def get_many(self, machines: Iterable[str]) -> dict[str, Snapshot | None]:
        """The latest snapshot of each machine (None: none, or expired)."""

    async def get(self, machine: str) -> Snapshot | None:
        return (await self.get_many([machine]))[machine]

    @abstractmethod
    async def note_write(self, machine: str, user: str, when: float, ttl: float) -> None:
        """Remember that ``user`` submitted or killed a job on ``machine`` at ``when``."""

    @abstractmethod
    async def last_write(self, machine: str, user: str) -> float | None:
        """When ``user`` last changed their queue on ``machine``, if within the ttl."""

    async def close(self) -> None:  # noqa: B027 - optional: only networked stores need it
        """Release connections."""


class MemoryStore(StatusStore):
    """A store inside one process: monitors and the API share it directly."""

    def __init__(self) -> None:
        self._snapshots: dict[str, tuple[Snapshot, float]] = {}
        self._writes: dict[tuple[str, str], tuple[float, float]] = {}

    async def put(self, snapshot: Snapshot, ttl: float) -> None:
        self._snapshots[snapshot.machine] = (snapshot, time.monotonic() + ttl)

    async def get_many(self, machines: Iterable[str]) -> dict[str, Snapshot | None]:
        now = time.monotonic()
        found: dict[str, Snapshot | None] = {}
        for machine in machines:
            entry = self._snapshots.get(machine)
            found[machine] = entry[0] if entry and entry[1] > now else None
        return found

    async def note_write(self, machine: str, user: str, when: float, ttl: float) -> None:
        self._writes[(machine, user)] = (when, time.monotonic() + ttl)

    async def last_write(self, machine: str, user: str) -> float | None:
        entry = self._writes.get((machine, user))
        if entry is None or entry[1] <= time.monotonic():
            self._writes.pop((machine, user), None)
            return None
        return entry[0]
