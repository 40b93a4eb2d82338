"""The embedded event store: a submit's first report, and each user's events capped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hpcgate.schedulers.base import JobRecord
from hpcgate.stores.events import JobEvent, Seen
from hpcgate.stores.sqlite_events import TRIM_EVERY, SqliteEventStore

ALICE, BOB = 1001, 1002


def event(uid: int, jobid: str, kind: str = "pending") -> JobEvent:
    return JobEvent(uid, "ln3", jobid, kind, time.time(), {"jobid": jobid})


def test_a_first_report_is_appended_once_and_never_over_a_monitors(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteEventStore(tmp_path / "events.sqlite", retention=3600, max_per_user=100)
        pending = Seen("PENDING", ALICE, "alice", "job")
        (stored,) = await store.append_first_report(event(ALICE, "7"), "ln3", "7", pending)
        assert stored.id and stored.jobid == "7"
        assert await store.append_first_report(event(ALICE, "7"), "ln3", "7", pending) == []
        # a job a monitor reported first (running already) gets no submit report
        running = Seen("RUNNING", ALICE, "alice", "job")
        await store.append([event(ALICE, "8", "running")], "ln3", {"8": running})
        assert await store.append_first_report(event(ALICE, "8"), "ln3", "8", pending) == []
        assert (await store.seen_jobs("ln3", ["7", "8"])) == {"7": pending, "8": running}
        kept = await store.read(ALICE, None, 100)
        assert [(e.jobid, e.kind) for e in kept] == [("7", "pending"), ("8", "running")]

    asyncio.run(scenario())


def test_each_users_events_are_cut_to_the_newest(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteEventStore(tmp_path / "events.sqlite", retention=3600, max_per_user=10)
        await store.append([event(BOB, "1")])
        for number in range(3 * TRIM_EVERY):
            await store.append([event(ALICE, str(number))])
        kept = [e.jobid for e in await store.read(ALICE, None, 1000)]
        assert 10 <= len(kept) <= 10 + TRIM_EVERY, "cut every TRIM_EVERY events"
        assert kept == [str(n) for n in range(3 * TRIM_EVERY - len(kept), 3 * TRIM_EVERY)]
        assert [e.jobid for e in await store.read(BOB, None, 1000)] == ["1"], "per user"

    asyncio.run(scenario())


def test_ended_jobs_records_are_kept_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteEventStore(tmp_path / "events.sqlite", retention=3600, max_per_user=100)
        rows = {
            "7": [JobRecord("7", "a", "alice", "COMPLETED", "work", "00:00:01", 1, 1, "n1", "0:0")],
            "8": [JobRecord("8", "b", "alice", "FAILED", "work", "00:00:02", 1, 1, "n2", "1:0")],
        }
        await store.put_finished_many("ln3", rows, 60)
        assert [await store.get_finished("ln3", jobid) for jobid in rows] == list(rows.values())
        assert await store.get_finished("ln3", "9") is None

    asyncio.run(scenario())
