"""Both stores behave alike; Redis is the machine's real one (and a private one to kill)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from hpcgate.schedulers.base import JobRecord
from hpcgate.schedulers.slurm import classified
from hpcgate.stores.base import StatusStore, StoreUnavailable
from hpcgate.stores.memory import MemoryStore
from hpcgate.stores.redis import RedisStore
from hpcgate.stores.snapshot import OwnJobs, Snapshot, Survey
from tests.conftest import REDIS_URL
from tests.redis_server import PrivateRedis


def snapshot(machine: str, taken: float = 1.0) -> Snapshot:
    return Snapshot(machine, taken, True, 0.01, (True,), data_taken=taken)


def job(jobid: str, uid: int) -> JobRecord:
    row = JobRecord(jobid, "j", "x", "RUNNING", "work", "0:01", 1, 1, "node1", "0:0")
    return classified(replace(row, uid=uid))


def survey(machine: str, taken: float, *jobs: JobRecord) -> Survey:
    return Survey(machine, taken, True, 0.01, (True,), data_taken=taken, jobs=jobs)


def spy(store: RedisStore, slow: str = "") -> list[tuple[str, tuple[Any, ...]]]:
    """What ``store`` sends from now on: each command's name and keys (or arguments).
    The command named ``slow`` takes 50 ms more, so that readers arriving meanwhile
    really overlap it."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    command = store.command

    async def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((name, tuple(args[0]) if name == "mget" else args))
        if name == slow:
            await asyncio.sleep(0.05)
        return await command(name, *args, **kwargs)

    store.command = counted  # type: ignore[method-assign]
    return sent


def run(body: Callable[[StatusStore], Coroutine[Any, Any, None]], store: StatusStore) -> None:
    async def main() -> None:
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest, prefix: str) -> Callable[[], StatusStore]:
    if request.param == "memory":
        return MemoryStore
    return lambda: RedisStore(REDIS_URL, prefix=prefix)


def test_put_replaces_and_get_many_reads(make_store: Callable[[], StatusStore]) -> None:
    async def body(store: StatusStore) -> None:
        await store.put(snapshot("a", 1.0), ttl=60)
        await store.put(snapshot("a", 2.0), ttl=60)
        found = await store.get_many(["a", "never"])
        assert found["a"] == snapshot("a", 2.0) and found["never"] is None

    run(body, make_store())


def test_each_users_jobs_are_read_apart(make_store: Callable[[], StatusStore]) -> None:
    async def body(store: StatusStore) -> None:
        assert await store.jobs_of("a", 1001) is None, "no survey yet"
        first = survey("a", 1.0, job("1", 1001), job("2", 1002), job("3", 1001))
        await store.put(first, ttl=60)
        assert await store.jobs_of("a", 1001) == OwnJobs(1.0, (first.jobs[0], first.jobs[2]))
        assert await store.jobs_of("a", 1002) == OwnJobs(1.0, (first.jobs[1],))
        assert await store.jobs_of("a", 1003) == OwnJobs(1.0), "none of theirs"
        assert await store.get("a") == first.head(), "the snapshot: its tally, not its jobs"
        assert (await store.get("b"), await store.jobs_of("b", 1001)) == (None, None)

        second = survey("a", 2.0, job("4", 1002))
        await store.put(second, ttl=60)
        assert await store.jobs_of("a", 1001) == OwnJobs(2.0), "replaced whole"
        assert await store.jobs_of("a", 1002) == OwnJobs(2.0, second.jobs)

        failed = replace(snapshot("a", 3.0), ok=False, data_taken=2.0, tally=second.tally)
        await store.put(failed, ttl=60)
        assert await store.get("a") == failed
        assert await store.jobs_of("a", 1002) == OwnJobs(2.0, second.jobs), "a failed probe's"
        assert (await store.get("a"), await store.jobs_of("a", 1002)) != (None, None)

    run(body, make_store())


def test_a_failed_probe_does_not_revive_expired_jobs(
    make_store: Callable[[], StatusStore],
) -> None:
    async def body(store: StatusStore) -> None:
        await store.put(survey("a", 1.0, job("1", 1001)), ttl=0.1)
        await asyncio.sleep(0.2)
        await store.put(replace(snapshot("a", 2.0), ok=False, data_taken=1.0), ttl=60)
        assert await store.get("a") is not None
        assert await store.jobs_of("a", 1001) is None, "the scheduler is asked instead"

    run(body, make_store())


def test_snapshots_expire(make_store: Callable[[], StatusStore]) -> None:
    async def body(store: StatusStore) -> None:
        await store.put(survey("a", 1.0, job("1", 1001)), ttl=0.4)
        await store.put(snapshot("a", 2.0), ttl=0.2)  # a failed probe's keeps the jobs alive
        assert await store.get("a") is not None
        assert await store.jobs_of("a", 1001) is not None
        await asyncio.sleep(0.3)
        assert await store.get("a") is None
        assert await store.jobs_of("a", 1001) is None, "gone with the snapshot"

    run(body, make_store())


def test_last_write_per_machine_and_user(make_store: Callable[[], StatusStore]) -> None:
    async def body(store: StatusStore) -> None:
        now = time.time()
        await store.note_write("a", "alice", now, ttl=0.3)
        assert await store.last_write("a", "alice") == now
        assert await store.last_write("a", "bob") is None
        assert await store.last_write("b", "alice") is None
        await asyncio.sleep(0.4)
        assert await store.last_write("a", "alice") is None

    run(body, make_store())


def test_two_redis_clients_share_snapshots(prefix: str) -> None:
    async def body() -> None:
        writer, reader = RedisStore(REDIS_URL, prefix=prefix), RedisStore(REDIS_URL, prefix=prefix)
        await writer.put(snapshot("shared", 5.0), ttl=60)
        assert (await reader.get("shared")) == snapshot("shared", 5.0)
        await writer.close()
        await reader.close()

    asyncio.run(body())


def test_a_redis_reader_moves_a_snapshot_only_when_it_changed(prefix: str) -> None:
    async def body() -> None:
        writer, reader = RedisStore(REDIS_URL, prefix=prefix), RedisStore(REDIS_URL, prefix=prefix)
        await writer.put(snapshot("a", 1.0), ttl=60)
        first = await reader.get("a")
        sent = spy(reader, slow="get")
        assert await reader.get("a") is first, "the same object: counts and index reused"
        assert sent == [("mget", (f"{prefix}stamp:a",))], "only the stamp crossed the wire"
        await writer.put(snapshot("a", 2.0), ttl=60)
        sent.clear()
        readers = await asyncio.gather(*(reader.get("a") for _ in range(50)))
        assert all(found == snapshot("a", 2.0) for found in readers)
        fetch = ("get", (f"{prefix}snapshot:a",))
        assert sent.count(fetch) == 1, "50 readers at once: one fetch, one parse"
        await writer.close()
        await reader.close()

    asyncio.run(body())


def test_a_redis_reader_moves_a_users_jobs_only_when_they_changed(prefix: str) -> None:
    async def body() -> None:
        writer, reader = RedisStore(REDIS_URL, prefix=prefix), RedisStore(REDIS_URL, prefix=prefix)
        many = [job(str(n), 1002) for n in range(2000)]  # another user's: never fetched
        await writer.put(survey("a", 1.0, job("1", 1001), *many), ttl=60)
        first = await reader.jobs_of("a", 1001)
        sent = spy(reader, slow="hmget")
        assert await reader.jobs_of("a", 1001) is first, "the same object: encoded once"
        stamp = ("mget", (f"{prefix}listed:a",))
        assert sent == [stamp], "only the survey's time crossed the wire"
        await writer.put(survey("a", 2.0, job("1", 1001), job("5", 1001), *many), ttl=60)
        sent.clear()
        readers = await asyncio.gather(*(reader.jobs_of("a", 1001) for _ in range(50)))
        assert all(own is readers[0] for own in readers)
        assert readers[0] is not None and [j.id for j in readers[0].jobs] == ["1", "5"]
        assert sent.count(stamp) == 50, "each reader looked"
        fetch = ("hmget", (f"{prefix}jobs:a", ["taken", "1001"]))
        assert sent.count(fetch) == 1, "50 readers: one fetch"
        await writer.close()
        await reader.close()

    asyncio.run(body())


def test_a_redis_reader_follows_a_monitor_whose_clock_stepped_back(prefix: str) -> None:
    async def body() -> None:
        writer, reader = RedisStore(REDIS_URL, prefix=prefix), RedisStore(REDIS_URL, prefix=prefix)
        await writer.put(survey("a", 10.0, job("1", 1001)), ttl=60)
        assert await reader.get("a") is not None and await reader.jobs_of("a", 1001)
        later = survey("a", 9.0, job("1", 1001), job("2", 1001))  # written later, older time
        await writer.put(later, ttl=60)
        assert await reader.get("a") == later.head()
        assert await reader.jobs_of("a", 1001) == OwnJobs(9.0, later.jobs)
        await writer.close()
        await reader.close()

    asyncio.run(body())


def test_redis_down_is_a_clear_unavailable_and_recovers(private_redis: PrivateRedis) -> None:
    async def body() -> None:
        store = RedisStore(private_redis.url, timeout=1)
        await store.put(snapshot("a"), ttl=60)
        private_redis.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            await store.get("a")
        assert time.monotonic() - started < 5
        private_redis.start()  # an empty Redis: the snapshot is gone, the client reconnects
        assert await store.get("a") is None
        await store.put(snapshot("a"), ttl=60)
        assert await store.get("a") is not None
        await store.close()

    asyncio.run(body())


def test_a_redis_error_never_shows_the_password() -> None:
    from tests.conftest import free_port

    store = RedisStore(f"redis://hpcgate:s3cret-word@127.0.0.1:{free_port()}/0", timeout=0.5)

    async def read() -> str:
        try:
            await store.get("ln3")
        except StoreUnavailable as exc:
            return exc.message
        finally:
            await store.close()
        raise AssertionError("a closed port answered")

    message = asyncio.run(read())
    assert "s3cret-word" not in message and "hpcgate@" not in message
    assert "redis://127.0.0.1:" in message


def test_a_redis_reader_checks_the_stamps_at_most_once_per_interval(prefix: str) -> None:
    async def body() -> None:
        writer = RedisStore(REDIS_URL, prefix=prefix)
        reader = RedisStore(REDIS_URL, prefix=prefix, check_interval=0.3)
        await writer.put(survey("a", 1.0, job("1", 1001)), ttl=60)
        sent = spy(reader)
        first = await reader.get("a")
        own = await reader.jobs_of("a", 1001)
        sent.clear()
        for _ in range(20):
            assert await reader.get("a") is first and await reader.jobs_of("a", 1001) is own
        assert sent == [], "within the interval: no round trip at all"

        await writer.put(survey("a", 2.0, job("1", 1001), job("2", 1001)), ttl=60)
        assert await reader.get("a") is first, "trusted until the interval is over"
        assert await reader.get("b") is None  # trusted too, for the interval
        await reader.put(snapshot("b", 3.0), ttl=60)
        assert await reader.get("b") == snapshot("b", 3.0), "its own write: seen at once"
        await asyncio.sleep(0.35)
        latest = await writer.get("a")
        assert latest is not None and latest.taken == 2.0
        assert await reader.get("a") == latest
        assert await reader.jobs_of("a", 1001) == OwnJobs(2.0, (job("1", 1001), job("2", 1001)))
        await writer.close()
        await reader.close()

    asyncio.run(body())
