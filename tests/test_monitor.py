"""Monitors on the real cluster: the counts are the cluster's, failures are recorded."""

from __future__ import annotations

import asyncio

import pytest

from hpcgate.stores.redis import RedisStore
from hpcgate.stores.snapshot import Survey
from hpcgate.wiring import build_monitor
from tests.conftest import wait_for
from tests.redis_server import PrivateRedis
from tests.slurm_helpers import cancel, gateway, held_job, sinfo_nodes, squeue_count, submit

pytestmark = pytest.mark.usefixtures("cluster")


def probe_once() -> Survey:
    gw, _ = gateway()
    survey = asyncio.run(build_monitor(gw).probe("ln3"))
    assert isinstance(survey, Survey), "a successful probe lists every job"
    return survey


def test_one_probe_is_two_scheduler_calls() -> None:
    gw, runner = gateway()
    snapshot = asyncio.run(build_monitor(gw).probe("ln3"))
    assert snapshot.ok and snapshot.error == "" and snapshot.health == 1.0
    assert runner.calls == {"squeue": 1, "sinfo": 1}
    assert snapshot.partitions["work"] and snapshot.partitions["debug"]
    assert sum(snapshot.partitions["work"].values()) == 4
    assert 0 < snapshot.probe_seconds < gw.config.limits.scheduler_timeout


def test_pending_counts_are_the_clusters() -> None:
    jobids = [held_job("alice", "count-me") for _ in range(3)]
    try:

        def agreed() -> Survey | None:
            snapshot = probe_once()
            pending = snapshot.queue_counts().get("PD", 0)
            return snapshot if pending >= 3 and pending == squeue_count("--states=PD") else None

        snapshot = wait_for(agreed, what="PD to match squeue")
        mine = [job for job in snapshot.jobs if job.id in jobids]
        assert {job.status for job in mine} == {"Pending"} and len(mine) == 3
        assert {job.user for job in mine} == {"alice"}
    finally:
        cancel(*jobids)


def test_running_jobs_show_as_R_and_allocated_nodes() -> None:
    # four tasks fill one 4-CPU node, so it is "alloc" rather than "mix"
    jobid = submit("bob", "--ntasks=4", "--wrap=sleep 120")
    try:

        def running() -> Survey | None:
            snapshot = probe_once()
            job = next((j for j in snapshot.jobs if j.id == jobid), None)
            alloc = snapshot.partitions["work"].get("alloc", 0)
            if job is None or job.status != "Running" or alloc < 1:
                return None
            # other tests' jobs start and end meanwhile: compared until one look agrees
            agrees = alloc == sinfo_nodes("work", "alloc") and snapshot.queue_counts().get(
                "R", 0
            ) == squeue_count("--states=R")
            return snapshot if agrees else None

        wait_for(running, timeout=60, what="the job to run on an allocated node")
    finally:
        cancel(jobid)


def test_a_failing_scheduler_is_recorded_and_the_last_data_kept() -> None:
    gw, _ = gateway(monitor={"history": 3})
    monitor = build_monitor(gw)
    machine = gw.machines["ln3"]
    good = asyncio.run(monitor.probe("ln3"))
    machine.scheduler.commands["squeue"] = "false"  # type: ignore[attr-defined]
    bad = asyncio.run(monitor.probe("ln3"))
    assert not bad.ok and "the scheduler failed" in bad.error
    assert bad.health == 0.5 and bad.data_taken == good.data_taken
    assert bad.partitions == good.partitions and bad.tally == good.tally
    assert not isinstance(bad, Survey), "no jobs of its own: the store keeps the last ones"
    machine.scheduler.commands["squeue"] = "squeue"  # type: ignore[attr-defined]
    healed = [asyncio.run(monitor.probe("ln3")) for _ in range(3)]
    assert healed[0].health == round(2 / 3, 3) and healed[-1].health == 1.0
    assert len(healed[-1].probes) == 3


def test_a_failing_probe_command_fails_the_probe() -> None:
    gw, _ = gateway(machines={"ln3": {"probe_command": ["sh", "-c", "echo broken >&2; exit 3"]}})
    snapshot = asyncio.run(build_monitor(gw).probe("ln3"))
    assert not snapshot.ok and "probe command exited 3: broken" in snapshot.error
    assert snapshot.partitions, "the scheduler data itself was read"


def test_a_restarted_monitor_continues_the_health_history() -> None:
    gw, _ = gateway()
    asyncio.run(build_monitor(gw).run_once())
    asyncio.run(build_monitor(gw).run_once())  # a new Monitor, the same store
    snapshot = asyncio.run(gw.stores.status.get("ln3"))
    assert snapshot is not None and len(snapshot.probes) == 2


def test_the_monitor_survives_its_store_going_away(private_redis: PrivateRedis) -> None:
    gw, _ = gateway(store={"backend": "redis", "redis_url": private_redis.url, "timeout": 1})
    assert isinstance(gw.stores.status, RedisStore)

    async def body() -> None:
        monitor = build_monitor(gw)
        await monitor.run_once()
        private_redis.stop()
        (snapshot,) = await monitor.run_once()  # logs, does not raise
        assert snapshot.ok
        private_redis.start()
        await monitor.run_once()
        assert await gw.stores.status.get("ln3") is not None
        await gw.stores.status.close()

    asyncio.run(body())
