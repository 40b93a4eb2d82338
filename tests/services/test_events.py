"""How the monitor's probes become job events (fast tier: a replayed Slurm, the embedded
event store): accounting read while the queue is listed, and read again shortly for a
job that left the queue before accounting showed how it ended."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hpcgate.config import EventsConfig, MonitorConfig, StatusConfig
from hpcgate.monitor import Monitor
from hpcgate.runners.replay import ReplayRunner
from hpcgate.schedulers.base import JobRecord
from hpcgate.services import events
from hpcgate.services.events import EventService
from hpcgate.stores.events import JobEvent, MachineEvents, Seen
from hpcgate.stores.memory import MemoryStore
from hpcgate.stores.sqlite_events import SqliteEventStore
from tests.services.helpers import ALICE, CONTROLLER_DOWN, listing, machine, record

HPCMON = ALICE  # the monitor's account does not matter to a replayed Slurm


def event_service(tmp_path: Path) -> EventService:
    """An event service on the embedded store in ``tmp_path``: a second one on the same
    file stands for another gateway process."""
    store = SqliteEventStore(tmp_path / "events.sqlite", retention=3600, max_per_user=1000)
    return EventService(store, EventsConfig())


def monitor_of(runner: ReplayRunner, tmp_path: Path) -> tuple[Monitor, EventService]:
    service = event_service(tmp_path)
    monitor = Monitor(
        {"ln3": machine(runner)},
        MemoryStore(),
        HPCMON,
        MonitorConfig(interval=1),
        StatusConfig(),
        events=service,
    )
    return monitor, service


async def job_seven_running(tmp_path: Path) -> tuple[ReplayRunner, Monitor, EventService]:
    """A monitor that has seen job 7 running (its first look: nothing reported)."""
    runner = ReplayRunner()
    runner.on("sinfo", "{}")
    runner.on("squeue", listing(record("7")))
    runner.on("sacct", listing())
    monitor, service = monitor_of(runner, tmp_path)
    await monitor.run_once()
    return runner, monitor, service


async def alices_events(service: EventService) -> list[JobEvent]:
    """Every event alice may read, oldest first."""
    return await service.read(ALICE.uid, None, events.EventFilter(), 100)


def kinds(found: list[JobEvent]) -> list[tuple[str, str]]:
    return [(event.jobid, event.kind) for event in found]


def test_accounting_is_read_while_the_queue_is_listed(tmp_path: Path) -> None:
    async def scenario() -> None:
        runner = ReplayRunner()
        runner.on("sinfo", "{}")
        runner.on("sacct", listing())
        runner.on("squeue", listing(record("7")))
        monitor, service = monitor_of(runner, tmp_path)
        await monitor.run_once()  # the first look: nothing to read since yet
        # now the listing is answered only once accounting has been asked: read one after
        # the other, the listing would time out and the probe fail
        asked = asyncio.Event()

        def asking(argv: tuple[str, ...]) -> bool:
            if argv[0] == "sacct":
                asked.set()
            return True

        runner.on("sacct", listing(), when=asking)
        runner.on("squeue", listing(record("7")), gate=asked)
        [snapshot] = await monitor.run_once()
        assert snapshot.ok, snapshot.error
        assert runner.programs().count("sacct") == 2, "accounting read once per probe"
        await service.close()

    asyncio.run(scenario())


def test_a_job_that_left_before_accounting_showed_its_end_is_reported_at_a_late_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "LATE_READS", (0.01, 0.01))

    async def scenario() -> None:
        runner = ReplayRunner()
        runner.on("sinfo", "{}")
        runner.on("squeue", listing(record("7")))
        runner.on("sacct", listing())
        monitor, service = monitor_of(runner, tmp_path)
        await monitor.run_once()  # job 7 running: the baseline
        runner.on("squeue", listing())  # it left the queue...
        runner.on("sacct", listing(record("7", "COMPLETED")))
        runner.on("sacct", listing(), times=1)  # ...before accounting had its end
        await monitor.run_once()
        found = await alices_events(service)
        assert kinds(found) == [("7", "completed")]
        assert found[0].data["previous_state"] == "RUNNING"
        assert runner.programs().count("sacct") == 3, "the probe's read, then one late read"
        await monitor.run_once()  # the next probe finds it again: nothing is repeated
        assert kinds(await alices_events(service)) == [("7", "completed")]
        await service.close()

    asyncio.run(scenario())


def test_late_reads_give_up_and_leave_the_job_to_the_next_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "LATE_READS", (0.01, 0.01))

    async def scenario() -> None:
        runner, monitor, service = await job_seven_running(tmp_path)
        runner.on("squeue", listing())
        await monitor.run_once()  # left; accounting has nothing in its read or two late ones
        assert runner.programs().count("sacct") == 4
        assert await alices_events(service) == []
        runner.on("sacct", listing(record("7", "FAILED", exit_code="3:0")))
        await monitor.run_once()
        [failed] = await alices_events(service)
        assert (failed.kind, failed.data["exit_code"]) == ("failed", 3)
        await service.close()

    asyncio.run(scenario())


def test_reported_states_are_read_whole_once_then_only_for_jobs_that_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        runner = ReplayRunner()
        runner.on("sinfo", "{}")
        runner.on("sacct", listing())
        runner.on("squeue", listing(*(record(str(n)) for n in range(1, 101))))
        monitor, service = monitor_of(runner, tmp_path)
        whole: list[str] = []
        asked: list[list[str]] = []
        machine_events, seen_jobs = service.store.machine_events, service.store.seen_jobs

        async def whole_read(machine: str) -> MachineEvents:
            whole.append(machine)
            return await machine_events(machine)

        async def some_read(machine: str, jobids: list[str]) -> dict[str, Seen]:
            asked.append(sorted(jobids, key=int))
            return await seen_jobs(machine, jobids)

        monkeypatch.setattr(service.store, "machine_events", whole_read)
        monkeypatch.setattr(service.store, "seen_jobs", some_read)
        for _ in range(3):
            await monitor.run_once()
        assert whole == ["ln3"] and asked == [[], []]
        # job 5 changes; a gateway process reports a submit (101) and a kill (7) on its own
        gateway = event_service(tmp_path)
        await gateway.submitted("ln3", ALICE, "101", "job")
        await gateway.cancelled("ln3", ALICE, "7", record("7"))
        await gateway.close()
        asked.clear()
        states = {str(n): "RUNNING" for n in range(1, 101)}
        states |= {"5": "SUSPENDED", "7": "COMPLETING", "101": "PENDING"}
        runner.on("squeue", listing(*(record(jobid, state) for jobid, state in states.items())))
        await monitor.run_once()
        assert asked == [["5", "7", "101"]] and whole == ["ln3"]
        found = await alices_events(service)
        # only the gateway's own reports and job 5's change: 101 and 7 are not repeated
        assert kinds(found) == [("101", "pending"), ("7", "cancelled"), ("5", "suspended")]
        await service.close()

    asyncio.run(scenario())


def test_a_kill_reported_while_accounting_is_read_again_is_not_reported_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "LATE_READS", (0.2, 0.2))

    async def scenario() -> None:
        runner, monitor, service = await job_seven_running(tmp_path)
        runner.on("squeue", listing())  # gone; accounting has it only at the late read
        runner.on("sacct", listing(record("7", "CANCELLED by 1001")))
        runner.on("sacct", listing(), times=1)
        probing = asyncio.create_task(monitor.run_once())
        await asyncio.sleep(0.1)  # the round now waits for its late read
        await service.cancelled("ln3", ALICE, "7", record("7"))
        await probing
        found = await alices_events(service)
        assert kinds(found) == [("7", "cancelled")]
        await service.close()

    asyncio.run(scenario())


def test_a_job_only_another_gateway_process_reported_is_found_by_a_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # submitted through a gateway process, ended before any probe, accounting down: only
    # the reported states name it, and a whole read of them finds it
    monkeypatch.setattr(events, "FULL_READ_EVERY", 0.0)

    async def scenario() -> None:
        runner = ReplayRunner()
        runner.on("sinfo", "{}")
        runner.on("squeue", listing())
        runner.on("sacct", listing())
        monitor, service = monitor_of(runner, tmp_path)
        await monitor.run_once()
        await monitor.run_once()
        gateway = event_service(tmp_path)
        await gateway.submitted("ln3", ALICE, "101", "job")
        runner.on("sacct", CONTROLLER_DOWN)
        service.config = EventsConfig(accounting_wait=0)
        await monitor.run_once()  # it left the queue (never seen there)...
        await monitor.run_once()  # ...and accounting cannot say how it ended
        found = await alices_events(service)
        assert kinds(found) == [("101", "pending"), ("101", "ended")]
        await gateway.close()
        await service.close()

    asyncio.run(scenario())


def test_a_final_record_is_read_from_the_store_once_for_repeated_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        service = event_service(tmp_path)
        store = service.store
        await store.put_finished("ln3", "7", [record("7", "COMPLETED")], 3600)
        reads: list[str] = []
        get_finished = store.get_finished

        async def counted(machine: str, jobid: str) -> list[JobRecord] | None:
            reads.append(jobid)
            return await get_finished(machine, jobid)

        monkeypatch.setattr(store, "get_finished", counted)
        for _ in range(3):
            kept = await service.finished("ln3", "7")
            assert kept is not None and kept[0].state == "COMPLETED"
        # a job without a final record is asked again every time: it may end any moment
        assert await service.finished("ln3", "8") is None
        assert await service.finished("ln3", "8") is None
        assert reads == ["7", "8", "8"]
        await service.close()

    asyncio.run(scenario())


def test_no_late_reads_when_accounting_did_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a sick slurmdbd must not hold the monitor's round for two more timeouts
    monkeypatch.setattr(events, "LATE_READS", (0.01, 0.01))

    async def scenario() -> None:
        runner, monitor, service = await job_seven_running(tmp_path)
        runner.on("squeue", listing())
        runner.on("sacct", CONTROLLER_DOWN)
        await monitor.run_once()
        assert runner.programs().count("sacct") == 2, "the baseline's read and this one's"
        assert await alices_events(service) == []
        await service.close()

    asyncio.run(scenario())
