"""Where each job's output goes, recorded at submit, so it stays readable after the
scheduler forgets the job.

One small record per (machine, job): the owner's uid and name, and the expanded stdout and
stderr paths. Three implementations: in memory (tests, embedding), in the embedded
store's SQLite file (the default: it outlives the process) and in Redis
(``{prefix}output:{machine}:{jobid}``, shared by every gateway process). Every method may
raise :class:`~hpcgate.stores.base.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from hpcgate.stores.base import OutputPathStore, OutputRecord, StoreUnavailable


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


class SqliteOutputPaths(OutputPathStore):
    """Records in the embedded store's SQLite file (table ``job_output``)."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS job_output (machine TEXT NOT NULL, jobid TEXT NOT "
                "NULL, record TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (machine, jobid))"
            )
            self._connection = connection
        return self._connection

    async def _run(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[str]]:
        def locked() -> list[tuple[str]]:
            with self._lock:
                return self._connect().execute(sql, parameters).fetchall()

        try:
            return await asyncio.to_thread(locked)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(
                f"the job output records (SQLite file {self.path}) cannot be used: {exc}"
            ) from None

    async def put(self, machine: str, jobid: str, record: OutputRecord, ttl: float) -> None:
        now = time.time()
        await self._run("DELETE FROM job_output WHERE expires <= ?", (now,))
        await self._run(
            "INSERT OR REPLACE INTO job_output (machine, jobid, record, expires) "
            "VALUES (?, ?, ?, ?)",
            (machine, jobid, record.to_json(), now + ttl),
        )

    async def get(self, machine: str, jobid: str) -> OutputRecord | None:
        rows = await self._run(
            "SELECT record FROM job_output WHERE machine = ? AND jobid = ? AND expires > ?",
            (machine, jobid, time.time()),
        )
        return OutputRecord.from_json(rows[0][0]) if rows else None

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


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
