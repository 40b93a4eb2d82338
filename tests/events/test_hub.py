"""The per-process event hub on the embedded store (no cluster): fan-out by owner and
filter, and a slow client dropped with a last message instead of buffered without end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hpcgate.services.events import DROPPED, EventFilter, EventHub, Watcher
from hpcgate.stores.events import JobEvent
from hpcgate.stores.sqlite_events import SqliteEventStore


def event(uid: int, jobid: str, kind: str = "running") -> JobEvent:
    return JobEvent(uid, "ln3", jobid, kind, time.time(), {"jobid": jobid})


def test_events_reach_their_owner_and_a_slow_client_is_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteEventStore(tmp_path / "state.sqlite", retention=3600, max_per_user=100)
        hub = EventHub(store)
        alice = Watcher(1001, EventFilter(), size=3)
        only_two = Watcher(1001, EventFilter(jobid="2"), size=3)
        bob = Watcher(1002, EventFilter(), size=3)
        for watcher in (alice, only_two, bob):
            await hub.add(watcher)
        await store.append([event(1001, "1"), event(1001, "2"), event(1002, "9")])
        for _ in range(50):
            if alice.queue.qsize() == 2 and bob.queue.qsize() == 1:
                break
            await asyncio.sleep(0.05)
        assert [alice.queue.get_nowait().jobid for _ in range(2)] == ["1", "2"]
        assert only_two.queue.get_nowait().jobid == "2" and only_two.queue.empty()
        assert bob.queue.get_nowait().jobid == "9"
        # nobody reads alice's queue: past 3 events she is dropped, with one last message
        await store.append([event(1001, str(n)) for n in range(10, 15)])
        for _ in range(50):
            if alice.dropped:
                break
            await asyncio.sleep(0.05)
        assert alice.dropped and alice.queue.get_nowait() is DROPPED and alice.queue.empty()
        assert alice not in hub._watchers.get(1001, set())
        await hub.close()
        await store.close()

    asyncio.run(scenario())
