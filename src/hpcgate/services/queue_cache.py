"""Queue listings from the monitors' snapshots instead of one squeue per request.

A listing is the caller's jobs in the machine's latest survey (the store keeps each
user's apart), while that survey is younger than ``max_age`` and was taken after the
caller's last submit or kill on the machine (read-your-writes). Otherwise the caller
gets a live query.
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
            own = await self.store.jobs_of(self.machine, account.uid)
            if own is None or time.time() - own.taken > self.max_age:
                return None
            wrote = max(
                await self.store.last_write(self.machine, user) or 0.0,
                self._local_writes.get(user, 0.0),
            )
        except StoreUnavailable as exc:
            log.warning("queue listing for %s falls back to the scheduler: %s", user, exc.message)
            return None
        if wrote >= own.taken:
            return None  # the snapshot may predate the user's own submit or kill
        return Listing(list(own.jobs), own.taken, from_snapshot=True)

    async def hint(self, account: UnixAccount, jobid: str) -> tuple[bool, JobRecord | None]:
        """Whether the latest snapshot, however old, may list the job among the user's
        queued ones (True when there is no snapshot to tell), and its record there if it
        does. A hint only, never an answer."""
        try:
            own = await self.store.jobs_of(self.machine, account.uid)
        except StoreUnavailable:
            return True, None
        if own is None:
            return True, None
        record = own.find(jobid)
        return record is not None, record

    async def note_write(self, user: str) -> None:
        """The user just changed their queue: their next listing must see it."""
        now = time.time()
        self._local_writes[user] = now
        try:
            await self.store.note_write(self.machine, user, now, ttl=self.max_age + 60)
        except StoreUnavailable as exc:
            log.warning("could not record %s's write on %s: %s", user, self.machine, exc.message)
