"""Queue listings from snapshots: few scheduler calls, and users always see their own writes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hpcgate.accounts import UnixAccount
from hpcgate.jobspec import parse_submission
from hpcgate.wiring import build_monitor
from tests.slurm_helpers import cancel, gateway

pytestmark = pytest.mark.usefixtures("cluster")
SLEEPER = {"jobscript": "#!/bin/bash\nsleep 300\n"}


def test_a_fresh_snapshot_answers_without_the_scheduler() -> None:
    gw, runner = gateway(status={"queue_max_age": 60})
    alice = UnixAccount.lookup("alice")

    async def body() -> None:
        (snapshot,) = await build_monitor(gw).run_once()
        runner.calls.clear()
        listings = [await gw.machines["ln3"].queue(alice) for _ in range(50)]
        assert runner.calls == {}, "no scheduler call for 50 listings"
        assert all(listing.taken == snapshot.data_taken for listing in listings)

    asyncio.run(body())


def test_an_old_snapshot_is_not_served() -> None:
    gw, runner = gateway(status={"queue_max_age": 0.5})
    alice = UnixAccount.lookup("alice")

    async def body() -> None:
        await build_monitor(gw).run_once()
        await asyncio.sleep(0.6)
        runner.calls.clear()
        asked = time.time()
        listing = await gw.machines["ln3"].queue(alice)
        assert runner.calls == {"squeue": 1} and listing.taken >= asked

    asyncio.run(body())


def test_read_your_writes_after_submit_and_kill() -> None:
    gw, runner = gateway(status={"queue_max_age": 60})
    machine = gw.machines["ln3"]
    alice, bob = UnixAccount.lookup("alice"), UnixAccount.lookup("bob")

    async def body() -> None:
        await build_monitor(gw).run_once()
        jobid = await machine.submit(alice, parse_submission(SLEEPER, max_script_bytes=10_000))
        try:
            listing = await machine.queue(alice)
            assert jobid in [job.id for job in listing.jobs], "a job just submitted is listed"
            runner.calls.clear()
            await machine.queue(bob)
            assert runner.calls == {}, "bob wrote nothing: the snapshot still serves him"

            # a snapshot newer than the submit serves alice again, the job in it
            await build_monitor(gw).run_once()
            runner.calls.clear()
            listing = await machine.queue(alice)
            assert runner.calls == {} and jobid in [job.id for job in listing.jobs]

            before_kill = time.time()
            await machine.cancel(alice, jobid)
            listing = await machine.queue(alice)
            assert listing.taken > before_kill, "the listing after the kill was read before it"
            shown = {job.status for job in listing.jobs if job.id == jobid}
            assert not shown & {"Pending", "Running"}, "the kill is shown"

            # once a snapshot newer than the write exists, it serves alice again
            await build_monitor(gw).run_once()
            runner.calls.clear()
            await machine.queue(alice)
            assert runner.calls == {}
        finally:
            cancel(jobid)

    asyncio.run(body())


def test_identical_live_queries_are_coalesced() -> None:
    gw, runner = gateway(status={"queue_max_age": 0})  # every listing is live
    alice, bob = UnixAccount.lookup("alice"), UnixAccount.lookup("bob")

    async def body() -> None:
        machine = gw.machines["ln3"]
        listings = await asyncio.gather(
            *(machine.queue(alice) for _ in range(20)), *(machine.queue(bob) for _ in range(20))
        )
        assert runner.calls == {"squeue": 2}, "one squeue for alice's 20, one for bob's 20"
        assert len({id(listing) for listing in listings[:20]}) == 1

    asyncio.run(body())


def test_job_detail_asks_the_controller_only_when_accounting_cannot_answer() -> None:
    gw, runner = gateway(status={"queue_max_age": 60})
    machine = gw.machines["ln3"]
    alice = UnixAccount.lookup("alice")
    quick = {"jobscript": "#!/bin/bash\ntrue\n"}
    held = {"jobscript": "#!/bin/bash\n#SBATCH --hold\nsleep 300\n"}

    async def body() -> None:
        queued = await machine.submit(alice, parse_submission(SLEEPER, max_script_bytes=10_000))
        waiting = await machine.submit(alice, parse_submission(held, max_script_bytes=10_000))
        ended = await machine.submit(alice, parse_submission(quick, max_script_bytes=10_000))
        try:
            await build_monitor(gw).run_once()
            runner.calls.clear()
            (row, *steps) = await machine.job(alice, waiting)
            assert row.status == "Pending" and row.id == waiting and steps == []
            assert runner.calls == {"squeue": 1}, "a job waiting to start: the controller alone"

            for _ in range(100):  # until a snapshot shows the other one started
                runner.calls.clear()
                (row, *_) = await machine.job(alice, queued)
                if row.status == "Running":
                    break
                await build_monitor(gw).run_once()
                await asyncio.sleep(0.2)
            assert row.status == "Running"
            assert runner.calls == {"squeue": 1, "sacct": 1}, "a running job: both views"

            for _ in range(100):  # until the monitor has kept the ended job's final record
                await build_monitor(gw).run_once()
                runner.calls.clear()
                (row, *_) = await machine.job(alice, ended)
                if row.finished and not runner.calls:
                    break
                await asyncio.sleep(0.2)
            assert row.status == "Completed" and not runner.calls, (
                "an ended job: from its kept final record, with no scheduler call"
            )
        finally:
            cancel(queued, waiting)

    asyncio.run(body())


def test_a_listing_after_a_submit_never_joins_one_that_started_before_it() -> None:
    gw, runner = gateway(status={"queue_max_age": 0})  # every listing is live
    machine = gw.machines["ln3"]
    alice = UnixAccount.lookup("alice")
    run = runner.run

    async def slow_squeue(account: UnixAccount, argv: Any, **kwargs: Any) -> Any:
        done = await run(account, argv, **kwargs)
        if argv[0] == "squeue":
            await asyncio.sleep(1.0)  # a listing that read the queue, then took its time
        return done

    runner.run = slow_squeue  # type: ignore[method-assign]

    async def body() -> None:
        earlier = asyncio.ensure_future(machine.queue(alice))
        await asyncio.sleep(0.2)
        jobid = await machine.submit(alice, parse_submission(SLEEPER, max_script_bytes=10_000))
        try:
            later = await machine.queue(alice)
            assert jobid in [job.id for job in later.jobs], "the listing sees the submit"
            await earlier
        finally:
            cancel(jobid)

    asyncio.run(body())
