"""Queue listings from the monitors' snapshots instead of one squeue per request.

A listing comes from the latest snapshot, filtered to the caller, while that snapshot is
younger than ``max_age`` and was taken after the caller's last submit or kill on the
machine (read-your-writes). Otherwise the caller gets a live query.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from hpcgate.accounts import UnixAccount
from hpcgate.schedulers.base import JobRecord
from hpcgate.stores.base import StatusStore, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """A user's queued jobs and when that data was read from the scheduler (epoch s)."""

    jobs: list[JobRecord]
    taken: float
    from_snapshot: bool = False
    """Read from a snapshot: every listing of this user until the next one is the same."""


class QueueCache:
    """Snapshot-backed listings for one machine."""

    def __init__(self, store: StatusStore, machine: str, max_age: float) -> None:
        self.store = store
        self.machine = machine
        self.max_age = max_age
        self._local_writes: dict[str, float] = {}

    async def listing(self, account: UnixAccount) -> Listing | None:
        """The user's listing from a fresh enough snapshot, or None to ask the scheduler."""
        user = account.name
        if self.max_age <= 0:
            return None
        try:
            snapshot = await self.store.get(self.machine)
            if snapshot is None or snapshot.data_taken is None:
                return None
            taken = snapshot.data_taken
            if time.time() - taken > self.max_age:
                return None
            wrote = max(
                await self.store.last_write(self.machine, user) or 0.0,
                self._local_writes.get(user, 0.0),
            )
        except StoreUnavailable as exc:
            log.warning("queue listing for %s falls back to the scheduler: %s", user, exc.message)
            return None
        if wrote >= taken:
            return None  # the snapshot may predate the user's own submit or kill
        return Listing(list(snapshot.jobs_by_uid.get(account.uid, ())), taken, from_snapshot=True)

    async def hint(self, account: UnixAccount, jobid: str) -> tuple[bool, JobRecord | None]:
        """Whether the latest snapshot, however old, may list the job among the user's
        queued ones (True when there is no snapshot to tell), and its record there if it
        does. A hint only, never an answer."""
        try:
            snapshot = await self.store.get(self.machine)
        except StoreUnavailable:
            return True, None
        if snapshot is None:
            return True, None
        record = snapshot.job_of(account.uid, jobid)
        return record is not None, record

    async def shows_queued(self, account: UnixAccount, jobid: str) -> bool:
        """Whether the latest snapshot, however old, lists the job among the user's queued
        ones; True when there is no snapshot to tell. A hint only, never an answer."""
        try:
            snapshot = await self.store.get(self.machine)
        except StoreUnavailable:
            return True
        if snapshot is None:
            return True
        return any(job.id == jobid for job in snapshot.jobs_by_uid.get(account.uid, ()))

    async def note_write(self, user: str) -> None:
        """The user just changed their queue: their next listing must see it."""
        now = time.time()
        self._local_writes[user] = now
        try:
            await self.store.note_write(self.machine, user, now, ttl=self.max_age + 60)
        except StoreUnavailable as exc:
            log.warning("could not record %s's write on %s: %s", user, self.machine, exc.message)
