"""Job events, ended jobs and webhooks in SQLite: the embedded default, kept across restarts.

The tables live in the embedded store's one file (``store.path``, beside the Idempotency-Key
records of :mod:`hpcgate.stores.sqlite`), on a connection of their own, in WAL mode. Event
ids are the table's autoincrement sequence, so they are ordered for every user. Followers
in this process are woken at once by an append; other processes sharing the file see new
events within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcgate.schedulers.base import JobRecord
from hpcgate.stores.events import (
    Delivery,
    EventStore,
    JobEvent,
    MachineEvents,
    Seen,
    Subscription,
    WebhookStore,
    encode_records,
)
from hpcgate.stores.snapshot import record_from_dict
from hpcgate.stores.sqlite_file import SqliteFile

PURGE_EVERY = 60.0
TRIM_EVERY = 32
"""A user's oldest events past ``max_per_user`` go every this many of their events that a
process appends (and at its first): each process may leave up to this many more."""
OTHER_PROCESSES_POLL = 1.0  # seconds: how soon appends by another process are seen

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uid INTEGER NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_uid ON job_events (uid, seq);
CREATE INDEX IF NOT EXISTS job_events_time ON job_events (time);
CREATE TABLE IF NOT EXISTS job_seen (
    machine TEXT NOT NULL, jobid TEXT NOT NULL, seen TEXT NOT NULL,
    PRIMARY KEY (machine, jobid)
);
CREATE TABLE IF NOT EXISTS job_marks (machine TEXT PRIMARY KEY, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS finished_jobs (
    machine TEXT NOT NULL, jobid TEXT NOT NULL, rows TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (machine, jobid)
);
CREATE INDEX IF NOT EXISTS finished_jobs_expires ON finished_jobs (expires);
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id TEXT PRIMARY KEY, uid INTEGER NOT NULL, subscription TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_subscriptions_uid ON webhook_subscriptions (uid);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    key TEXT PRIMARY KEY, due REAL NOT NULL, delivery TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (due);
CREATE TABLE IF NOT EXISTS webhook_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, subscription TEXT NOT NULL, entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_log_subscription ON webhook_log (subscription, seq);
"""


class SqliteEventStore(EventStore, WebhookStore):
    """Events, reported states, ended jobs and webhooks in one SQLite file."""

    def __init__(
        self, path: Path, *, retention: float, max_per_user: int, timeout: float = 5.0
    ) -> None:
        self.file = SqliteFile(path, _SCHEMA, "the event store", timeout=timeout)
        self.retention = retention
        self.max_per_user = max_per_user
        self._next_purge = 0.0
        self._untrimmed: dict[int, int] = {}  # uid -> events appended since its last trim
        self._appended = asyncio.Event()

    @property
    def path(self) -> Path:
        return self.file.path

    # -- events -------------------------------------------------------------------------

    async def append(
        self,
        events: list[JobEvent],
        machine: str | None = None,
        seen: dict[str, Seen | None] | None = None,
        since: float | None = None,
    ) -> list[JobEvent]:
        return self._woke(
            await self.file.transaction(lambda db: self._append(db, events, machine, seen, since))
        )

    async def append_first_report(
        self, event: JobEvent, machine: str, jobid: str, seen: Seen
    ) -> list[JobEvent]:
        def append(db: sqlite3.Connection) -> list[JobEvent]:
            reported = db.execute(
                "SELECT 1 FROM job_seen WHERE machine = ? AND jobid = ?", (machine, jobid)
            ).fetchone()
            return [] if reported else self._append(db, [event], machine, {jobid: seen}, None)

        return self._woke(await self.file.transaction(append))

    def _woke(self, stored: list[JobEvent]) -> list[JobEvent]:
        """Wake the followers of this process when something was appended."""
        if stored:
            woken, self._appended = self._appended, asyncio.Event()
            woken.set()
        return stored

    def _append(
        self,
        db: sqlite3.Connection,
        events: list[JobEvent],
        machine: str | None,
        seen: dict[str, Seen | None] | None,
        since: float | None,
    ) -> list[JobEvent]:
        """``append`` inside a transaction (in the file's worker thread, one at a time)."""
        stored = []
        for event in events:
            cursor = db.execute(
                "INSERT INTO job_events (uid, time, event) VALUES (?, ?, ?)",
                (event.uid, event.time, event.to_json()),
            )
            stored.append(event.with_id(str(cursor.lastrowid)))
            self._untrimmed[event.uid] = self._untrimmed.get(event.uid, TRIM_EVERY) + 1
        for uid in {event.uid for event in events}:
            if self._untrimmed[uid] < TRIM_EVERY:
                continue  # finding the cut walks max_per_user index entries: not per event
            self._untrimmed[uid] = 0
            db.execute(
                "DELETE FROM job_events WHERE uid = ? AND seq <= (SELECT seq FROM "
                "job_events WHERE uid = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (uid, uid, self.max_per_user),
            )
        if machine is not None:
            for jobid, state in (seen or {}).items():
                if state is None:
                    db.execute(
                        "DELETE FROM job_seen WHERE machine = ? AND jobid = ?", (machine, jobid)
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO job_seen (machine, jobid, seen) VALUES (?, ?, ?)",
                        (machine, jobid, state.to_json()),
                    )
            if since is not None:
                db.execute(
                    "INSERT OR REPLACE INTO job_marks (machine, since) VALUES (?, ?)",
                    (machine, since),
                )
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY
            db.execute("DELETE FROM job_events WHERE time < ?", (now - self.retention,))
            db.execute("DELETE FROM finished_jobs WHERE expires <= ?", (now,))
        return stored

    async def machine_events(self, machine: str) -> MachineEvents:
        def read(db: sqlite3.Connection) -> MachineEvents:
            rows = db.execute("SELECT jobid, seen FROM job_seen WHERE machine = ?", (machine,))
            seen = {jobid: Seen.from_json(raw) for jobid, raw in rows}
            mark = db.execute("SELECT since FROM job_marks WHERE machine = ?", (machine,))
            found = mark.fetchone()
            return MachineEvents(seen, None if found is None else float(found[0]))

        return await self.file.run(read)

    async def accounting_mark(self, machine: str) -> float | None:
        def read(db: sqlite3.Connection) -> float | None:
            found = db.execute("SELECT since FROM job_marks WHERE machine = ?", (machine,))
            row = found.fetchone()
            return None if row is None else float(row[0])

        return await self.file.run(read)

    async def seen_jobs(self, machine: str, jobids: list[str]) -> dict[str, Seen]:
        def read(db: sqlite3.Connection) -> dict[str, Seen]:
            found = {}
            for jobid in jobids:
                row = db.execute(
                    "SELECT seen FROM job_seen WHERE machine = ? AND jobid = ?", (machine, jobid)
                ).fetchone()
                if row is not None:
                    found[jobid] = Seen.from_json(row[0])
            return found

        return await self.file.run(read) if jobids else {}

    async def read(self, uid: int, after: str | None, limit: int) -> list[JobEvent]:
        position = _seq(after)

        def read(db: sqlite3.Connection) -> list[JobEvent]:
            rows = db.execute(
                "SELECT seq, event FROM job_events WHERE uid = ? AND seq > ? AND time >= ? "
                "ORDER BY seq LIMIT ?",
                (uid, position, time.time() - self.retention, limit),
            )
            return [JobEvent.from_json(raw, str(seq)) for seq, raw in rows]

        return await self.file.run(read)

    async def feed_cursor(self) -> str:
        def last(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT MAX(seq) FROM job_events").fetchone()
            return str(row[0] or 0)

        return await self.file.run(last)

    async def follow(self, cursor: str, timeout: float) -> tuple[str, list[JobEvent]]:
        deadline = time.monotonic() + timeout
        position = _seq(cursor)

        def read(db: sqlite3.Connection) -> list[tuple[int, str]]:
            return db.execute(
                "SELECT seq, event FROM job_events WHERE seq > ? ORDER BY seq LIMIT 1000",
                (position,),
            ).fetchall()

        while True:
            woken = self._appended  # taken before reading: an append after it wakes us
            rows = await self.file.run(read)
            if rows:
                events = [JobEvent.from_json(raw, str(seq)) for seq, raw in rows]
                return events[-1].id, events
            left = deadline - time.monotonic()
            if left <= 0:
                return cursor, []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=min(left, OTHER_PROCESSES_POLL))

    async def put_finished(
        self, machine: str, jobid: str, rows: list[JobRecord], ttl: float
    ) -> None:
        await self.put_finished_many(machine, {jobid: rows}, ttl)

    async def put_finished_many(
        self, machine: str, finished: Mapping[str, list[JobRecord]], ttl: float
    ) -> None:
        expires = time.time() + ttl

        def put(db: sqlite3.Connection) -> None:  # encoded here: off the event loop
            db.executemany(
                "INSERT OR REPLACE INTO finished_jobs (machine, jobid, rows, expires) "
                "VALUES (?, ?, ?, ?)",
                [(machine, job, encode_records(rows), expires) for job, rows in finished.items()],
            )

        # several rows in one transaction; one row is a transaction of its own
        await (self.file.transaction if len(finished) > 1 else self.file.run)(put)

    async def get_finished(self, machine: str, jobid: str) -> list[JobRecord] | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT rows FROM finished_jobs WHERE machine = ? AND jobid = ? AND expires > ?",
                (machine, jobid, time.time()),
            ).fetchone()
            return None if row is None else str(row[0])

        text = await self.file.run(read)
        return None if text is None else [record_from_dict(row) for row in json.loads(text)]

    # -- webhooks -----------------------------------------------------------------------

    async def put_subscription(self, subscription: Subscription) -> None:
        await self.file.run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO webhook_subscriptions (id, uid, subscription) "
                "VALUES (?, ?, ?)",
                (subscription.id, subscription.uid, subscription.to_json()),
            )
        )

    async def subscription(self, subscription_id: str) -> Subscription | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT subscription FROM webhook_subscriptions WHERE id = ?", (subscription_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        raw = await self.file.run(read)
        return None if raw is None else Subscription.from_json(raw)

    async def subscriptions(self, uid: int) -> list[Subscription]:
        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT subscription FROM webhook_subscriptions WHERE uid = ?", (uid,)
            )
            return [str(row[0]) for row in rows]

        found = [Subscription.from_json(raw) for raw in await self.file.run(read)]
        return sorted(found, key=lambda subscription: subscription.created)

    async def delete_subscription(self, subscription: Subscription) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM webhook_subscriptions WHERE id = ?", (subscription.id,))
            db.execute("DELETE FROM webhook_log WHERE subscription = ?", (subscription.id,))

        await self.file.transaction(delete)

    async def enqueue(self, deliveries: list[Delivery], due: float) -> None:
        def enqueue(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO webhook_deliveries (key, due, delivery) VALUES (?, ?, ?)",
                [(delivery.key, due, delivery.to_json()) for delivery in deliveries],
            )

        if deliveries:
            await self.file.transaction(enqueue)

    async def claim_due(self, now: float, lease: float, limit: int) -> list[Delivery]:
        def claim(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT key, delivery FROM webhook_deliveries WHERE due <= ? ORDER BY due LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE webhook_deliveries SET due = ? WHERE key = ?",
                [(now + lease, key) for key, _ in rows],
            )
            return [str(raw) for _, raw in rows]

        return [Delivery.from_json(raw) for raw in await self.file.transaction(claim)]

    async def reschedule(self, delivery: Delivery, due: float) -> None:
        await self.file.run(
            lambda db: db.execute(
                "UPDATE webhook_deliveries SET due = ?, delivery = ? WHERE key = ?",
                (due, delivery.to_json(), delivery.key),
            )
        )

    async def finish(self, delivery: Delivery) -> None:
        await self.file.run(
            lambda db: db.execute("DELETE FROM webhook_deliveries WHERE key = ?", (delivery.key,))
        )

    async def log(self, subscription_id: str, entry: dict[str, Any], size: int) -> None:
        def log(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO webhook_log (subscription, entry) VALUES (?, ?)",
                (subscription_id, json.dumps(entry)),
            )
            db.execute(
                "DELETE FROM webhook_log WHERE subscription = ? AND seq <= (SELECT seq FROM "
                "webhook_log WHERE subscription = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (subscription_id, subscription_id, size),
            )

        await self.file.transaction(log)

    async def delivery_log(self, subscription_id: str) -> list[dict[str, Any]]:
        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT entry FROM webhook_log WHERE subscription = ? ORDER BY seq DESC",
                (subscription_id,),
            )
            return [str(row[0]) for row in rows]

        return [json.loads(raw) for raw in await self.file.run(read)]

    async def close(self) -> None:
        await self.file.close()


def _seq(event_id: str | None) -> int:
    if not event_id:
        return 0
    head = event_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0
