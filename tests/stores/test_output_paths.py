"""The records of where jobs write their output: memory, SQLite and Redis alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcgate.stores.base import OutputPathStore, OutputRecord, StoreUnavailable
from hpcgate.stores.output_paths import MemoryOutputPaths, RedisOutputPaths, SqliteOutputPaths
from tests.conftest import REDIS_URL

RECORD = OutputRecord(uid=1001, user="alice", stdout="/home/alice/o\n1.out", stderr="/e")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutputPathStore]:
    if request.param == "memory":
        yield MemoryOutputPaths()
    elif request.param == "sqlite":
        yield SqliteOutputPaths(tmp_path / "state.sqlite")
    else:
        prefix = request.getfixturevalue("prefix")
        yield RedisOutputPaths(REDIS_URL, prefix=prefix)


def test_put_get_expire_and_replace(store: OutputPathStore) -> None:
    async def main() -> None:
        assert await store.get("ln3", "7") is None
        await store.put("ln3", "7", RECORD, 60)
        assert await store.get("ln3", "7") == RECORD
        assert await store.get("other", "7") is None
        later = OutputRecord(1001, "alice", "/a", "/b", complete=False)
        await store.put("ln3", "7", later, 60)
        assert await store.get("ln3", "7") == later
        await store.put("ln3", "8", RECORD, 1)
        await asyncio.sleep(1.1)  # the record's own expiry, nothing to poll
        assert await store.get("ln3", "8") is None
        await store.close()

    asyncio.run(main())


def test_many_records_are_put_at_once(store: OutputPathStore) -> None:
    async def main() -> None:
        later = OutputRecord(1001, "alice", "/a", "/b", complete=False)
        await store.put_many("ln3", {"7": RECORD, "8": later}, 60)
        assert [await store.get("ln3", jobid) for jobid in ("7", "8")] == [RECORD, later]
        await store.put_many("ln3", {}, 60)
        await store.close()

    asyncio.run(main())


def test_sqlite_records_outlive_the_process(tmp_path: Path) -> None:
    async def main() -> None:
        first = SqliteOutputPaths(tmp_path / "s.sqlite")
        await first.put("ln3", "9", RECORD, 60)
        await first.close()
        assert await SqliteOutputPaths(tmp_path / "s.sqlite").get("ln3", "9") == RECORD

    asyncio.run(main())


def test_an_unreachable_redis_is_store_unavailable() -> None:
    async def main() -> None:
        store = RedisOutputPaths("redis://127.0.0.1:1/0", timeout=0.5)
        with pytest.raises(StoreUnavailable):
            await store.get("ln3", "1")

    asyncio.run(main())


def test_the_built_gateway_holds_the_output_records_and_closes_them(tmp_path: Path) -> None:
    """The embedded store family keeps output records in its SQLite file, the gateway
    holds each machine's file and output services, and closing it closes the file."""
    from hpcgate.config import Config
    from hpcgate.wiring import build_gateway

    config = Config.model_validate(
        {"machines": {"ln3": {}}, "store": {"path": str(tmp_path / "state.sqlite")}}
    )
    built = build_gateway(config)
    records = built.stores.output_paths
    assert isinstance(records, SqliteOutputPaths)
    assert built.output_of("ln3").store is records
    assert built.output_of("ln3").files is built.files_of("ln3")
    assert built.output["ln3"].submitted in built.machine("ln3").submit_listeners

    async def main() -> None:
        await records.put("ln3", "7", RECORD, 60)
        assert records.file.is_open
        await built.close()
        assert not records.file.is_open

    asyncio.run(main())
