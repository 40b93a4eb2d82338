"""One SQLite file of the embedded store, shared by the gateway processes of one host.

Opened on first use, in WAL mode. The schema is set up under a lock file beside it
(``<file>.lock``): SQLite's switch to WAL does not wait for another process doing the
same, so gateway processes starting together would otherwise fail at once with
"database is locked". Calls run in the file object's own thread, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from hpcgate.stores.base import StoreUnavailable

T = TypeVar("T")


class SqliteFile:
    """A lazily opened connection to ``path`` with ``schema`` set up, for one store."""

    def __init__(
        self,
        path: Path,
        schema: str,
        description: str,
        *,
        timeout: float = 5.0,
        setup: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        self.path = path
        self.schema = schema
        self.description = description
        """What uses the file, for errors: e.g. 'the idempotency store'."""
        self.timeout = timeout
        self.setup = setup
        """Run once after the schema, under the same lock (e.g. a first row)."""
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._thread: ThreadPoolExecutor | None = None
        self._thread_pid = 0

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _setting_up(self.path):
                connection = sqlite3.connect(
                    self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
                )
                try:
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute("PRAGMA synchronous=NORMAL")
                    connection.executescript(self.schema)
                    if self.setup is not None:
                        self.setup(connection)
                except BaseException:
                    connection.close()
                    raise
            self.path.chmod(0o600)
            self._connection = connection
        return self._connection

    def _worker(self) -> ThreadPoolExecutor:
        """The file's own thread (made again in a forked process, which has none)."""
        if self._thread is None or self._thread_pid != os.getpid():
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{self.path.name}")
            self._thread_pid = os.getpid()
        return self._thread

    async def run(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """``action`` on the connection, in the file's own thread, one call at a time (a
        hand-off to one waiting thread costs less than to a shared pool's, whose threads
        then contend for the connection); StoreUnavailable on failure."""

        def locked() -> T:
            with self._lock:
                return action(self._connect())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker(), locked)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(
                f"{self.description} (SQLite file {self.path}) cannot be used: {exc}"
            ) from None

    async def transaction(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """``action`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back if it fails)."""

        def transaction(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = action(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return result

        return await self.run(transaction)

    async def close(self) -> None:
        """Close the connection; a later call opens it again."""

        def close() -> None:
            with self._lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._worker(), close)
        if self._thread is not None:  # its thread ends; a later call makes another
            self._thread.shutdown(wait=False)
            self._thread = None


@contextlib.contextmanager
def _setting_up(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively (other processes setting up the file wait)."""
    descriptor = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
