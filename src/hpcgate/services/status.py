"""GET /api/job: every machine's status, read from the store only."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from hpcgate.config import StatusConfig
from hpcgate.contract import data_taken
from hpcgate.stores.base import StatusStore
from hpcgate.stores.snapshot import Snapshot


class StatusService:
    """Builds the spec's status shape from snapshots; touches no scheduler."""

    def __init__(self, store: StatusStore, machines: list[str], config: StatusConfig) -> None:
        self.store = store
        self.machines = machines
        self.config = config

    async def current(self) -> tuple[tuple[Any, ...], Callable[[], dict[str, dict[str, Any]]]]:
        """A version that changes with any snapshot or any machine's staleness, and how to
        build the status for it (callers keep what they built until the version changes)."""
        snapshots = await self.store.get_many(self.machines)
        now = time.time()
        version = tuple(
            (s.taken, now - s.taken > self.config.stale_after) if s else None
            for s in (snapshots[name] for name in self.machines)
        )
        return version, functools.partial(self._build, snapshots, now)

    def _build(
        self, snapshots: dict[str, Snapshot | None], now: float
    ) -> dict[str, dict[str, Any]]:
        status: dict[str, dict[str, Any]] = {}
        for name in self.machines:
            snapshot = snapshots[name]
            if snapshot is None:
                status[name] = {
                    "queue": {},
                    "info": {},
                    "updated": None,
                    "stale": True,
                    "error": f"no monitor has reported on {name} yet",
                }
                continue
            entry: dict[str, Any] = {
                "queue": snapshot.queue_counts()
                | {"time": snapshot.probe_seconds, "health": snapshot.health},
                "info": snapshot.partitions,
                "updated": data_taken(snapshot.taken),
                "stale": now - snapshot.taken > self.config.stale_after,
            }
            if snapshot.error:
                entry["error"] = snapshot.error
            status[name] = entry
        return status
