"""Where each job's output goes, recorded at submit, so it stays readable after the
scheduler forgets the job.

One small record per (machine, job): the owner's uid and name, and the expanded stdout and
stderr paths. Three implementations: in memory (tests, embedding), in the embedded
store's SQLite file (the default: it outlives the process) and in Redis
(``{prefix}output:{machine}:{jobid}``, shared by every gateway process). Every method may
raise :class:`~hpcgate.stores.base.StoreUnavailable`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from hpcgate.stores.base import OutputPathStore, OutputRecord, StoreUnavailable
from hpcgate.stores.sqlite_file import SqliteFile


class MemoryOutputPaths(OutputPathStore):
    """Records in this process only."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], tuple[float, OutputRecord]] = {}

    async def put(self, machine: str, jobid: str, record: OutputRecord, ttl: float) -> None:
        self._records[(machine, jobid)] = (time.time() + ttl, record)

    async def get(self, machine: str, jobid: str) -> OutputRecord | None:
        kept = self._records.get((machine, jobid))
        if kept is None or kept[0] <= time.time():
            return None
        return kept[1]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_output (
    machine TEXT NOT NULL,
    jobid TEXT NOT NULL,
    record TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (machine, jobid)
);
CREATE INDEX IF NOT EXISTS job_output_expires ON job_output (expires);
"""
PURGE_EVERY = 300.0  # seconds between sweeps of expired records


class SqliteOutputPaths(OutputPathStore):
    """Records in the embedded store's SQLite file (table ``job_output``)."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.file = SqliteFile(path, _SCHEMA, "the job output records", timeout=timeout)
        self._next_purge = 0.0

    async def put(self, machine: str, jobid: str, record: OutputRecord, ttl: float) -> None:
        await self.put_many(machine, {jobid: record}, ttl)

    async def put_many(self, machine: str, records: Mapping[str, OutputRecord], ttl: float) -> None:
        def put(db: sqlite3.Connection) -> None:
            now = time.time()
            if now >= self._next_purge:
                db.execute("DELETE FROM job_output WHERE expires <= ?", (now,))
                self._next_purge = now + PURGE_EVERY
            rows = [(machine, jobid, kept.to_json(), now + ttl) for jobid, kept in records.items()]
            db.executemany(
                "INSERT OR REPLACE INTO job_output (machine, jobid, record, expires) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )

        # several rows in one transaction; one row is a transaction of its own
        await (self.file.transaction if len(records) > 1 else self.file.run)(put)

    async def get(self, machine: str, jobid: str) -> OutputRecord | None:
        rows = await self.file.run(
            lambda db: db.execute(
                "SELECT record FROM job_output WHERE machine = ? AND jobid = ? AND expires > ?",
                (machine, jobid, time.time()),
            ).fetchall()
        )
        return OutputRecord.from_json(rows[0][0]) if rows else None

    async def close(self) -> None:
        await self.file.close()


class RedisOutputPaths(OutputPathStore):
    """Records in Redis, shared by every gateway process."""

    def __init__(self, url: str, *, prefix: str = "hpcgate:", timeout: float = 2.0) -> None:
        import redis.asyncio as redis

        self.prefix = prefix
        self.timeout = timeout
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def _key(self, machine: str, jobid: str) -> str:
        return f"{self.prefix}output:{machine}:{jobid}"

    async def put(self, machine: str, jobid: str, record: OutputRecord, ttl: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._client.set(self._key(machine, jobid), record.to_json(), ex=int(ttl))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis cannot be used: {exc}") from None

    async def get(self, machine: str, jobid: str) -> OutputRecord | None:
        from redis.exceptions import RedisError

        try:
            raw = await self._client.get(self._key(machine, jobid))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis cannot be used: {exc}") from None
        return OutputRecord.from_json(raw) if raw else None

    async def close(self) -> None:
        await self._client.aclose()
