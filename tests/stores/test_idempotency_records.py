"""The idempotency records of every store family: an atomic claim and swap, and whether
records survive the process that wrote them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcgate.stores.base import DONE, PENDING, IdempotencyRecord, IdempotencyStore, Stores
from hpcgate.stores.memory import MemoryIdempotencyStore, MemorySessionStore, MemoryStore
from hpcgate.stores.output_paths import MemoryOutputPaths
from hpcgate.stores.redis import redis_stores
from hpcgate.stores.sqlite import SqliteIdempotencyStore
from tests.conftest import REDIS_URL

PENDING_HERE = IdempotencyRecord("digest", PENDING, claimed=1.0, owner="here")
DONE_HERE = IdempotencyRecord("digest", DONE, "12", claimed=1.0, owner="here")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IdempotencyStore]:
    if request.param == "memory":
        yield MemoryIdempotencyStore()
    elif request.param == "sqlite":
        yield SqliteIdempotencyStore(tmp_path / "state.sqlite")
    else:
        prefix = request.getfixturevalue("prefix")
        yield redis_stores(REDIS_URL, prefix=prefix, timeout=2).idempotency


def test_one_claim_and_one_swap_win(store: IdempotencyStore) -> None:
    async def body() -> None:
        claims = await asyncio.gather(*(store.claim("k", PENDING_HERE, 60) for _ in range(5)))
        assert claims.count(None) == 1 and claims.count(PENDING_HERE) == 4
        swaps = await asyncio.gather(
            *(store.swap("k", PENDING_HERE, DONE_HERE, 60) for _ in range(5))
        )
        assert swaps.count(True) == 1
        assert await store.get("k") == DONE_HERE
        assert not await store.swap("gone", PENDING_HERE, DONE_HERE, 60), "no record, no swap"
        since = await store.kept_since()
        assert since <= time.time() and await store.kept_since() == since

    asyncio.run(body())


CLAIM = """
import asyncio, sys
from hpcgate.stores.base import IdempotencyRecord
from hpcgate.stores.sqlite import SqliteIdempotencyStore
from pathlib import Path
record = IdempotencyRecord("digest", "pending", owner=sys.argv[2])
won = asyncio.run(SqliteIdempotencyStore(Path(sys.argv[1])).claim("k", record, 60)) is None
print("won" if won else "lost")
"""


def test_sqlite_claims_race_across_processes_and_outlive_them(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, str(path), f"p{n}"], stdout=subprocess.PIPE, text=True
        )
        for n in range(6)
    ]
    outcomes = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    reopened = SqliteIdempotencyStore(path)
    kept = asyncio.run(reopened.get("k"))
    assert kept is not None and kept.owner == f"p{outcomes.index('won')}"
    first = asyncio.run(reopened.kept_since())
    assert first == asyncio.run(SqliteIdempotencyStore(path).kept_since()), "a file's birth"


def test_closing_the_stores_closes_the_sqlite_file_and_a_later_use_reopens_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    store = SqliteIdempotencyStore(path)
    stores = Stores(MemoryStore(), MemorySessionStore(), store, MemoryOutputPaths())

    async def body() -> None:
        assert await store.claim("k", PENDING_HERE, 60) is None
        await stores.close()
        assert not open_files_of_this_process(path), "closed with the stores"
        assert await store.get("k") == PENDING_HERE, "a use after close reopens the file"
        await store.close()

    asyncio.run(body())


def open_files_of_this_process(path: Path) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(str(path)):
                found.append(str(fd))
    return found
