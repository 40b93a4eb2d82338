"""Idempotency records in a SQLite file: the embedded default, which survives restarts.

One file on the gateway host (``store.path``; by default ``hpcgate-state.sqlite`` beside
the config file), in WAL mode, so several gateway processes on that host may share it.
Every operation is one transaction: a claim is an ``INSERT OR IGNORE`` and a swap reads
and replaces under ``BEGIN IMMEDIATE``, so two racing claims never both win. A commit is
durable against the gateway's death (``kill -9``); with ``synchronous=NORMAL`` the last
commits may be lost to a power cut, after which a retry finds its job by the tag Slurm
keeps (see :mod:`hpcgate.services.submits`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from hpcgate.stores.base import IdempotencyRecord, IdempotencyStore
from hpcgate.stores.sqlite_file import SqliteFile

DEFAULT_FILE_NAME = "hpcgate-state.sqlite"
PURGE_EVERY = 300.0  # seconds between sweeps of expired records

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SqliteIdempotencyStore(IdempotencyStore):
    """Idempotency records in a SQLite file, shared by the gateway processes of one host."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.file = SqliteFile(
            path, _SCHEMA, "the idempotency store", timeout=timeout, setup=_note_birth
        )
        self._next_purge = 0.0

    @property
    def path(self) -> Path:
        return self.file.path

    @staticmethod
    def _live(db: sqlite3.Connection, key: str, now: float) -> IdempotencyRecord | None:
        row = db.execute(
            "SELECT record FROM idempotency WHERE key = ? AND expires > ?", (key, now)
        ).fetchone()
        return IdempotencyRecord.from_json(row[0]) if row else None

    async def claim(
        self, key: str, record: IdempotencyRecord, ttl: float
    ) -> IdempotencyRecord | None:
        def claim(db: sqlite3.Connection) -> IdempotencyRecord | None:
            now = time.time()
            if now >= self._next_purge:
                db.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
                self._next_purge = now + PURGE_EVERY
            else:
                db.execute("DELETE FROM idempotency WHERE key = ? AND expires <= ?", (key, now))
            inserted = db.execute(
                "INSERT OR IGNORE INTO idempotency (key, record, expires) VALUES (?, ?, ?)",
                (key, record.to_json(), now + ttl),
            ).rowcount
            return None if inserted else self._live(db, key, now)

        return await self.file.transaction(claim)

    async def get(self, key: str) -> IdempotencyRecord | None:
        return await self.file.run(lambda db: self._live(db, key, time.time()))

    async def put(self, key: str, record: IdempotencyRecord, ttl: float) -> None:
        await self.file.run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO idempotency (key, record, expires) VALUES (?, ?, ?)",
                (key, record.to_json(), time.time() + ttl),
            )
        )

    async def delete(self, key: str) -> None:
        await self.file.run(lambda db: db.execute("DELETE FROM idempotency WHERE key = ?", (key,)))

    async def swap(
        self, key: str, expected: IdempotencyRecord, record: IdempotencyRecord, ttl: float
    ) -> bool:
        def swap(db: sqlite3.Connection) -> bool:
            now = time.time()
            replaced = self._live(db, key, now) == expected
            if replaced:
                db.execute(
                    "UPDATE idempotency SET record = ?, expires = ? WHERE key = ?",
                    (record.to_json(), now + ttl, key),
                )
            return replaced

        return await self.file.transaction(swap)

    async def kept_since(self) -> float:
        def created(db: sqlite3.Connection) -> float:
            row = db.execute("SELECT value FROM meta WHERE name = 'created'").fetchone()
            return float(row[0])

        return await self.file.run(created)

    async def close(self) -> None:
        await self.file.close()


def _note_birth(db: sqlite3.Connection) -> None:
    """The file's birth, once: records older than it may have been lost with the file."""
    db.execute(
        "INSERT OR IGNORE INTO meta (name, value) VALUES ('created', ?)", (repr(time.time()),)
    )


def default_path() -> Path:
    """Where the file goes when there is no config file to put it beside: systemd's
    ``$STATE_DIRECTORY``, else ``/var/lib/hpcgate`` (root) or ``~/.local/state/hpcgate``."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / DEFAULT_FILE_NAME
    if os.geteuid() == 0:
        return Path("/var/lib/hpcgate") / DEFAULT_FILE_NAME
    return Path.home() / ".local" / "state" / "hpcgate" / DEFAULT_FILE_NAME
