"""Machine with the real Slurm module over output recorded on the test cluster.

When Slurm's argv or output format changes, re-record (as root, cluster up):
``.venv/bin/python -m tests.services.record``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest

from hpcgate.accounts import UnixAccount
from hpcgate.errors import Forbidden
from hpcgate.runners.replay import ReplayRunner, failed
from hpcgate.schedulers.slurm import Slurm
from hpcgate.services.machine import Machine
from hpcgate.services.queue_cache import QueueCache
from hpcgate.stores.memory import MemoryStore
from tests.services.helpers import ALICE, LIMITS, put_snapshot, until
from tests.services.recordings import about, generic_argv, recording, replayed

RECORDED = about()
USER = replace(ALICE, name=RECORDED["user"], uid=RECORDED["uid"])
ENDED, HELD = RECORDED["ended"], RECORDED["held"]
RERECORD = "Slurm's argv changed: re-record with `.venv/bin/python -m tests.services.record`"


def slurm_machine(runner: ReplayRunner, store: MemoryStore | None = None) -> Machine:
    return Machine(
        "ln3",
        runner,
        Slurm(),
        command_limits=LIMITS,
        scheduler_limits=LIMITS,
        queue_cache=None if store is None else QueueCache(store, "ln3", 60),
    )


def replay() -> ReplayRunner:
    """A runner answering each recorded call (matched by its argv) with its recording."""
    slurm = Slurm()
    runner = ReplayRunner()
    for name, argv in (
        ("queue", slurm.queue_argv(USER.name)),
        ("live-held", slurm.live_job_argv(HELD)),
        ("history-ended", slurm.history_argv(ENDED)),
        ("nodes", slurm.nodes_argv()),
    ):
        runner.on(same_call_as(argv), replayed(name))
    return runner


def same_call_as(argv: list[str]) -> Callable[[tuple[str, ...]], bool]:
    """Matches a call of ``argv`` whatever its delimiter."""
    expected = generic_argv(argv)
    return lambda call: generic_argv(call) == expected


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("queue", lambda slurm: slurm.queue_argv(USER.name)),
        ("live-held", lambda slurm: slurm.live_job_argv(HELD)),
        ("history-ended", lambda slurm: slurm.history_argv(ENDED)),
        ("nodes", lambda slurm: slurm.nodes_argv()),
    ],
)
def test_the_recordings_are_of_the_argv_slurm_builds_now(name: str, build: object) -> None:
    assert callable(build)
    assert generic_argv(build(Slurm())) == recording(name).argv, RERECORD


def test_the_users_queue() -> None:
    runner = replay()

    answer = asyncio.run(slurm_machine(runner).queue(USER))

    assert [(job.id, job.status, job.name, job.uid) for job in answer.jobs] == [
        (HELD, "Pending", "recorded held", USER.uid)
    ]
    assert answer.jobs[0].nodelist == "(JobHeldUser)"


def test_a_held_job_in_detail() -> None:
    runner = replay()
    runner.on("sacct", replayed("history-ended"), when=lambda argv: f"--jobs={HELD}" in argv)

    rows = asyncio.run(slurm_machine(runner).job(USER, HELD))

    assert rows[0].id == HELD and rows[0].status == "Pending"


def test_an_ended_job_is_answered_from_accounting_alone() -> None:
    store = MemoryStore()
    runner = replay()

    async def body() -> None:
        await put_snapshot(store)
        rows = await slurm_machine(runner, store).job(USER, ENDED)
        assert [(row.id, row.status) for row in rows][:2] == [
            (ENDED, "Failed"),
            (f"{ENDED}.batch", "Failed"),
        ]
        assert rows[0].exit_code == "3:0" and rows[0].name == "recorded | ended"

    asyncio.run(body())
    assert runner.programs() == ["sacct"]


def test_the_recorded_uid_decides_ownership() -> None:
    runner = replay()
    runner.on("squeue", failed("slurm_load_jobs error: Invalid job id specified"))
    someone_else = UnixAccount("alice", USER.uid + 1, USER.gid, (), USER.home, USER.shell)

    with pytest.raises(Forbidden):
        asyncio.run(slurm_machine(runner).job(someone_else, ENDED))


def test_a_survey_reads_the_node_counts() -> None:
    runner = replay()
    runner.on(lambda argv: "--all" in argv, replayed("queue"))

    jobs, nodes = asyncio.run(slurm_machine(runner).survey(USER))

    assert [job.id for job in jobs] == [HELD]
    assert nodes == {"work": {"idle": 4}, "debug": {"idle": 2}}


def test_identical_concurrent_listings_share_one_squeue() -> None:
    """With the argv Slurm really builds (a new delimiter per call), not just equal ones."""
    runner = replay()
    answered = asyncio.Event()
    runner.rules[0].gate = answered  # the queue recording

    async def body() -> None:
        ln3 = slurm_machine(runner)
        listings = [asyncio.ensure_future(ln3.queue(USER)) for _ in range(10)]
        await until(lambda: len(runner.calls) >= 1)
        for _ in range(10):  # let every caller reach the query
            await asyncio.sleep(0)
        answered.set()
        answers = await asyncio.gather(*listings)
        assert {tuple(job.id for job in answer.jobs) for answer in answers} == {(HELD,)}

    asyncio.run(body())
    assert runner.programs() == ["squeue"]
