"""Sessions: random tokens, kept only as hashes, that expire; in memory or in Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis

from hpcgate.stores.base import SessionStore
from hpcgate.stores.memory import MemorySessionStore
from hpcgate.stores.redis import RedisSessionStore, RedisStore
from tests.conftest import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Callable[[], SessionStore]:
    if request.param == "memory":
        return MemorySessionStore
    prefix = request.getfixturevalue("prefix")
    return lambda: RedisSessionStore(RedisStore(REDIS_URL, prefix=prefix))


def test_tokens_are_random_and_never_stored_in_clear(
    make_store: Callable[[], SessionStore], prefix: str
) -> None:
    async def body() -> None:
        store = make_store()
        first, _ = await store.create("alice", 60)
        second, _ = await store.create("alice", 60)
        assert first != second and len(first) >= 40
        found = await store.get(first)
        assert found is not None and found.username == "alice"
        kept = store._sessions if isinstance(store, MemorySessionStore) else {}
        stored = repr(kept) + repr(redis.Redis.from_url(REDIS_URL).keys(f"{prefix}*"))
        assert first not in stored and second not in stored

    asyncio.run(body())


def test_sessions_expire(make_store: Callable[[], SessionStore]) -> None:
    async def body() -> None:
        store = make_store()
        token, session = await store.create("alice", 0.3)
        assert 0 <= session.remaining <= 1
        assert await store.get(token) is not None
        await asyncio.sleep(0.4)
        assert await store.get(token) is None

    asyncio.run(body())


def test_delete(make_store: Callable[[], SessionStore]) -> None:
    async def body() -> None:
        store = make_store()
        token, _ = await store.create("bob", 60)
        assert await store.delete(token) and not await store.delete(token)
        assert await store.get(token) is None and await store.get("unknown") is None

    asyncio.run(body())


def test_a_redis_session_is_valid_on_every_process(prefix: str) -> None:
    async def body() -> None:
        one = RedisSessionStore(RedisStore(REDIS_URL, prefix=prefix))
        two = RedisSessionStore(RedisStore(REDIS_URL, prefix=prefix))
        token, _ = await one.create("alice", 60)
        assert (await two.get(token)) is not None
        await two.delete(token)  # logout on one process ends it everywhere
        assert await one.get(token) is None

    asyncio.run(body())


def test_memory_store_purges_expired_sessions() -> None:
    store = MemorySessionStore()
    asyncio.run(store.create("a", 0.01))
    time.sleep(0.02)
    asyncio.run(store.create("b", 60))
    assert len(store._sessions) == 1
