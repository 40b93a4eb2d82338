"""Machine, the JOB module's actions on one machine, over a replay runner: no root, no
cluster. Each test says what the scheduler answers and checks what the service makes of
it, and which scheduler calls it made."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from hpcgate.errors import BadRequest, Conflict, Forbidden, NotFound, TimedOut, Unavailable
from hpcgate.jobspec import JobOptions, Submission
from hpcgate.process import Completed, Limits
from hpcgate.runners.replay import Call, ReplayRunner, failed, ok
from hpcgate.stores.memory import MemoryStore
from tests.services.helpers import (
    ALICE,
    BOB,
    CONTROLLER_DOWN,
    accept_writes,
    listing,
    machine,
    placeholder,
    put_snapshot,
    record,
    until,
)

ACCOUNTING_DOWN = failed("sacct: error: Problem talking to the database: Connection refused")
UNKNOWN_TO_THE_CONTROLLER = failed("slurm_load_jobs error: Invalid job id specified")


def sdiag(queued: int) -> Completed:
    """sdiag's output (trimmed) with ``queued`` records held for slurmdbd."""
    return ok(
        "Server thread count:  5\nAgent queue size:     0\nAgent count:          0\n"
        f"DBD Agent queue size: {queued}\n\nJobs submitted: 0\n"
    )


SCRIPT = Submission(JobOptions(name="hello"), script="#!/bin/bash\ntrue\n")


# job detail: merging the controller's view with accounting's


def test_a_running_job_is_the_controllers_row_with_accountings_steps() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(record("7", "RUNNING", elapsed="1:02")))
    runner.on("sacct", listing(placeholder("7"), record("7.batch"), record("7.extern")))

    rows = asyncio.run(machine(runner).job(ALICE, "7"))

    assert [(row.id, row.status) for row in rows] == [
        ("7", "Running"),
        ("7.batch", "Running"),
        ("7.extern", "Running"),
    ]
    assert rows[0].elapsed == "00:01:02" and rows[0].partition == "work"
    assert sorted(runner.programs()) == ["sacct", "squeue"]


def test_while_accounting_lags_its_placeholder_never_answers() -> None:
    """Accounting's placeholder may already say COMPLETED: not final, so the controller
    is asked even when no snapshot lists the job, and its row wins."""
    store = MemoryStore()
    runner = ReplayRunner()
    runner.on("sacct", listing(placeholder("7", "COMPLETED")))
    runner.on("squeue", listing(record("7", "RUNNING", name="hello")))

    async def body() -> None:
        await put_snapshot(store)  # a snapshot that does not list job 7
        rows = await machine(runner, store=store).job(ALICE, "7")
        assert [(row.id, row.status, row.name) for row in rows] == [("7", "Running", "hello")]

    asyncio.run(body())
    assert runner.programs() == ["sacct", "squeue"]


def test_a_pending_job_accounting_does_not_know_yet_is_shown() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(record("8", "PENDING", nodelist="(Priority)")))
    runner.on("sacct", listing())

    rows = asyncio.run(machine(runner).job(ALICE, "8"))

    assert [(row.id, row.status, row.nodelist) for row in rows] == [("8", "Pending", "(Priority)")]


def test_a_settled_final_record_answers_without_asking_the_controller() -> None:
    store = MemoryStore()
    runner = ReplayRunner()
    runner.on("sacct", listing(record("9", "FAILED", exit_code="3:0"), record("9.batch", "FAILED")))

    async def body() -> None:
        await put_snapshot(store)
        rows = await machine(runner, store=store).job(ALICE, "9")
        assert [(row.id, row.status) for row in rows] == [("9", "Failed"), ("9.batch", "Failed")]
        assert rows[0].exit_code == "3:0"

    asyncio.run(body())
    assert runner.programs() == ["sacct"]


def test_a_job_the_snapshot_shows_queued_is_asked_of_both_at_once() -> None:
    store = MemoryStore()
    runner = ReplayRunner()
    started = asyncio.Event()
    runner.on("sacct", listing(record("7", "COMPLETED")), gate=started)
    runner.on("squeue", listing(record("7", "COMPLETING")))

    async def body() -> None:
        await put_snapshot(store, record("7", "RUNNING"))
        detail = asyncio.ensure_future(machine(runner, store=store).job(ALICE, "7"))
        # the controller is asked while accounting has not answered yet
        await until(lambda: "squeue" in runner.programs())
        started.set()
        rows = await detail
        assert rows[0].status == "Completing"

    asyncio.run(body())


def test_with_the_controller_down_an_ended_job_still_answers() -> None:
    runner = ReplayRunner()
    runner.on("squeue", TimedOut("squeue did not finish within 5 s and was killed"))
    runner.on("sacct", listing(record("9", "COMPLETED"), record("9.batch", "COMPLETED")))

    rows = asyncio.run(machine(runner).job(ALICE, "9"))

    assert [(row.id, row.status) for row in rows] == [("9", "Completed"), ("9.batch", "Completed")]


def test_with_accounting_down_a_job_the_controller_knows_answers() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(record("7", "RUNNING")))
    runner.on("sacct", ACCOUNTING_DOWN)

    rows = asyncio.run(machine(runner).job(ALICE, "7"))

    assert [(row.id, row.status) for row in rows] == [("7", "Running")]


@pytest.mark.parametrize("controller", ["down", "does not know the job"])
def test_with_accounting_down_an_unknown_answer_is_503_never_404(controller: str) -> None:
    runner = ReplayRunner()
    if controller == "down":
        runner.on("squeue", CONTROLLER_DOWN)
    else:
        runner.on("squeue", failed("slurm_load_jobs error: Invalid job id specified"))
    runner.on("sacct", ACCOUNTING_DOWN)

    with pytest.raises(Unavailable):
        asyncio.run(machine(runner).job(ALICE, "7"))


def test_with_the_controller_down_an_unsettled_record_is_503() -> None:
    runner = ReplayRunner()
    runner.on("squeue", CONTROLLER_DOWN)
    runner.on("sacct", listing(placeholder("7")))

    with pytest.raises(Unavailable):
        asyncio.run(machine(runner).job(ALICE, "7"))


def test_a_job_neither_knows_is_404() -> None:
    runner = ReplayRunner()
    runner.on("squeue", UNKNOWN_TO_THE_CONTROLLER)
    runner.on("sacct", listing())
    runner.on("sdiag", sdiag(0))  # accounting has every record the controller sent

    with pytest.raises(NotFound, match="no job 404 on ln3"):
        asyncio.run(machine(runner).job(ALICE, "404"))
    assert runner.programs()[-2:] == ["sdiag", "sacct"], "read again after the check"


@pytest.mark.parametrize("action", ["detail", "kill"])
def test_records_that_land_while_the_lag_is_checked_answer_not_404(action: str) -> None:
    """slurmdbd commits the job between the first accounting read and the check that
    finds nothing held back: the read made after the check answers."""
    runner = ReplayRunner()
    runner.on("squeue", UNKNOWN_TO_THE_CONTROLLER)
    runner.on("sacct", listing(record("7", "COMPLETED"), record("7.batch", "COMPLETED")))
    runner.on("sacct", listing(), times=1)  # the first read: not there yet
    runner.on("sdiag", sdiag(0))
    ln3 = machine(runner)

    if action == "detail":
        rows = asyncio.run(ln3.job(ALICE, "7"))
        assert [(row.id, row.status) for row in rows] == [
            ("7", "Completed"),
            ("7.batch", "Completed"),
        ]
    else:
        with pytest.raises(Conflict, match="already finished"):
            asyncio.run(ln3.cancel(ALICE, "7"))
    assert "scancel" not in runner.programs()


@pytest.mark.parametrize("action", ["detail", "kill"])
def test_a_job_neither_knows_while_accounting_lags_is_503_never_404(action: str) -> None:
    """After a slurmdbd outage the controller may have forgotten an ended job whose
    records it still holds for accounting: "no such job" would be wrong."""
    runner = ReplayRunner()
    runner.on("squeue", UNKNOWN_TO_THE_CONTROLLER)
    runner.on("sacct", listing())
    runner.on("sdiag", sdiag(12))
    ln3 = machine(runner)

    with pytest.raises(Unavailable, match="accounting is catching up"):
        asyncio.run(ln3.job(ALICE, "7") if action == "detail" else ln3.cancel(ALICE, "7"))
    assert "scancel" not in runner.programs()


def test_when_it_cannot_tell_whether_accounting_lags_it_is_503() -> None:
    runner = ReplayRunner()
    runner.on("squeue", UNKNOWN_TO_THE_CONTROLLER)
    runner.on("sacct", listing())
    runner.on("sdiag", CONTROLLER_DOWN)

    with pytest.raises(Unavailable):
        asyncio.run(machine(runner).job(ALICE, "7"))


def test_a_known_job_needs_no_lag_check() -> None:
    runner = ReplayRunner()
    runner.on("squeue", UNKNOWN_TO_THE_CONTROLLER)
    runner.on("sacct", listing(record("9", "COMPLETED")))

    assert asyncio.run(machine(runner).job(ALICE, "9"))[0].status == "Completed"
    assert "sdiag" not in runner.programs()


# ownership: decided on the uid the scheduler recorded


def test_another_users_job_is_403() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(record("7", owner=BOB)))
    runner.on("sacct", listing(record("7", owner=BOB), record("7.batch", owner=BOB)))

    with pytest.raises(Forbidden, match="job 7 on ln3 belongs to another user"):
        asyncio.run(machine(runner).job(ALICE, "7"))


def test_ownership_is_the_recorded_uid_not_the_user_name() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(replace(record("7", owner=BOB), user="alice")))
    runner.on("sacct", listing())

    with pytest.raises(Forbidden):
        asyncio.run(machine(runner).job(ALICE, "7"))
    # and the other way round: alice's uid is alice's whatever name the row shows
    runner.on("squeue", listing(replace(record("7", owner=ALICE), user="root")))
    assert asyncio.run(machine(runner).job(ALICE, "7"))[0].id == "7"


def test_killing_another_users_job_is_403_and_nothing_is_cancelled() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(record("7", owner=BOB)))

    with pytest.raises(Forbidden):
        asyncio.run(machine(runner).cancel(ALICE, "7"))
    assert "scancel" not in runner.programs()


# cancel


def test_killing_a_running_job_cancels_it() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(record("7", "RUNNING")))
    runner.on("scancel", ok())

    asyncio.run(machine(runner).cancel(ALICE, "7"))

    assert [call.argv for call in runner.calls_to("scancel")] == [("scancel", "--", "7")]
    assert runner.calls_to("scancel")[0].account == ALICE


@pytest.mark.parametrize("known_to", ["controller", "accounting only"])
def test_killing_a_finished_job_is_409(known_to: str) -> None:
    runner = ReplayRunner()
    if known_to == "controller":
        runner.on("squeue", listing(record("9", "COMPLETED")))
    else:
        runner.on("squeue", failed("slurm_load_jobs error: Invalid job id specified"))
        runner.on("sacct", listing(record("9", "CANCELLED by 1001")))

    with pytest.raises(Conflict, match="already finished"):
        asyncio.run(machine(runner).cancel(ALICE, "9"))
    assert "scancel" not in runner.programs()


def test_killing_an_unknown_job_is_404() -> None:
    runner = ReplayRunner()
    runner.on("squeue", UNKNOWN_TO_THE_CONTROLLER)
    runner.on("sacct", listing())
    runner.on("sdiag", sdiag(0))

    with pytest.raises(NotFound):
        asyncio.run(machine(runner).cancel(ALICE, "404"))


def test_a_cancel_slurm_refuses_is_reported() -> None:
    runner = ReplayRunner()
    runner.on("squeue", listing(record("7", "RUNNING")))
    runner.on(
        "scancel", failed("scancel: error: Kill job error on job id 7: Access/permission denied")
    )

    with pytest.raises(Forbidden, match="permission denied"):
        asyncio.run(machine(runner).cancel(ALICE, "7"))


# a sick scheduler is 503, a slow command 504


def test_a_scheduler_that_does_not_answer_in_time_is_503() -> None:
    runner = ReplayRunner()
    runner.on("squeue", ok(), gate=asyncio.Event())  # never released
    slow = machine(runner)
    slow.scheduler_limits = Limits(timeout=0.05, output_bytes=1 << 20)

    with pytest.raises(Unavailable, match=r"did not answer within 0\.05 s"):
        asyncio.run(slow.queue(ALICE))


def test_a_command_line_runs_with_the_users_shell_and_a_failure_is_a_result() -> None:
    runner = ReplayRunner()
    runner.on(["/bin/bash", "-c", "ls /root"], failed("ls: cannot open directory", returncode=2))

    result = asyncio.run(machine(runner).run_command(ALICE, "ls /root"))

    assert (result.retcode, result.error) == (2, "ls: cannot open directory")


def test_a_command_past_its_time_limit_stays_504() -> None:
    runner = ReplayRunner()
    runner.on("/bin/bash", TimedOut("/bin/bash did not finish within 5 s and was killed"))

    with pytest.raises(TimedOut):
        asyncio.run(machine(runner).run_command(ALICE, "sleep 100"))


# queue listings: snapshots, read-your-writes, coalescing


def test_a_fresh_snapshot_answers_the_users_own_jobs_without_the_scheduler() -> None:
    store = MemoryStore()
    runner = ReplayRunner()
    mine, theirs = record("7", owner=ALICE), record("8", owner=BOB)

    async def body() -> None:
        await put_snapshot(store, mine, theirs)
        answer = await machine(runner, store=store).queue(ALICE)
        assert [job.id for job in answer.jobs] == ["7"] and answer.from_snapshot

    asyncio.run(body())
    assert runner.calls == []


def test_a_stale_snapshot_is_not_used() -> None:
    store = MemoryStore()
    runner = ReplayRunner()
    runner.on("squeue", listing(record("7"), record("8", owner=BOB)))

    async def body() -> None:
        await put_snapshot(store, age=120)
        answer = await machine(runner, store=store, max_age=60).queue(ALICE)
        assert [job.id for job in answer.jobs] == ["7"] and not answer.from_snapshot

    asyncio.run(body())
    assert runner.programs() == ["squeue"]


def test_after_the_users_own_submit_their_listing_comes_live() -> None:
    store = MemoryStore()
    runner = ReplayRunner()
    accept_writes(runner)
    runner.on("sbatch", ok("10\n"))
    runner.on("squeue", listing(record("10", "PENDING")))

    async def body() -> None:
        await put_snapshot(store, record("8", owner=BOB))
        ln3 = machine(runner, store=store)
        assert await ln3.submit(ALICE, SCRIPT) == "10"
        answer = await ln3.queue(ALICE)
        assert [job.id for job in answer.jobs] == ["10"] and not answer.from_snapshot
        # bob wrote nothing: his listing still comes from the snapshot
        assert (await ln3.queue(BOB)).from_snapshot

    asyncio.run(body())
    assert runner.programs().count("squeue") == 1


def test_identical_concurrent_listings_share_one_scheduler_call() -> None:
    runner = ReplayRunner()
    answered = asyncio.Event()
    runner.on("squeue", listing(record("7")), gate=answered)

    async def body() -> None:
        ln3 = machine(runner)
        listings = [asyncio.ensure_future(ln3.queue(ALICE)) for _ in range(20)]
        await until(lambda: len(runner.calls) == 1)
        answered.set()
        answers = await asyncio.gather(*listings)
        assert {tuple(job.id for job in answer.jobs) for answer in answers} == {("7",)}

    asyncio.run(body())
    assert runner.programs() == ["squeue"]


def test_another_users_listing_does_not_join_the_users_query() -> None:
    runner = ReplayRunner()
    answered = asyncio.Event()
    runner.on("squeue", listing(record("7"), record("8", owner=BOB)), gate=answered)

    async def body() -> None:
        ln3 = machine(runner)
        mine = asyncio.ensure_future(ln3.queue(ALICE))
        theirs = asyncio.ensure_future(ln3.queue(BOB))
        await until(lambda: len(runner.calls) == 2)
        answered.set()
        assert [job.id for job in (await mine).jobs] == ["7"]
        assert [job.id for job in (await theirs).jobs] == ["8"]

    asyncio.run(body())


@pytest.mark.parametrize("write", ["submit", "kill"])
def test_a_listing_after_a_write_does_not_join_a_query_started_before_it(write: str) -> None:
    runner = ReplayRunner()
    accept_writes(runner)
    before = asyncio.Event()
    runner.on("squeue", listing(record("7", "RUNNING")), when=lambda argv: "--jobs=7" in argv)
    runner.on("squeue", listing(record("7", "RUNNING")), gate=before, times=1)
    runner.on("sbatch", ok("10\n"))
    runner.on("scancel", ok())

    async def body() -> None:
        ln3 = machine(runner)
        early = asyncio.ensure_future(ln3.queue(ALICE))
        await until(lambda: len(runner.calls_to("squeue")) == 1)
        # the queue as it is after the write
        after = [record("7", "RUNNING"), record("10", "PENDING")] if write == "submit" else []
        runner.on("squeue", listing(*after), when=lambda argv: "--user=alice" in argv)
        if write == "submit":
            await ln3.submit(ALICE, SCRIPT)
        else:
            await ln3.cancel(ALICE, "7")
        late = await ln3.queue(ALICE)
        assert [job.id for job in late.jobs] == [job.id for job in after]
        before.set()
        assert [job.id for job in (await early).jobs] == ["7"]

    asyncio.run(body())
    queries = [call for call in runner.calls_to("squeue") if "--user=alice" in call.argv]
    assert len(queries) == 2


def test_one_caller_going_away_does_not_cancel_the_shared_query() -> None:
    runner = ReplayRunner()
    answered = asyncio.Event()
    runner.on("squeue", listing(record("7")), gate=answered)

    async def body() -> None:
        ln3 = machine(runner)
        leaving = asyncio.ensure_future(ln3.queue(ALICE))
        staying = asyncio.ensure_future(ln3.queue(ALICE))
        await until(lambda: len(runner.calls) == 1)
        leaving.cancel()
        await until(leaving.done)
        answered.set()
        assert [job.id for job in (await staying).jobs] == ["7"]

    asyncio.run(body())
    assert runner.programs() == ["squeue"]


# submit


def test_a_generated_script_is_written_as_the_user_and_submitted_where_it_is() -> None:
    runner = ReplayRunner()
    accept_writes(runner)
    runner.on("sbatch", ok("10\n"))

    assert asyncio.run(machine(runner).submit(ALICE, SCRIPT)) == "10"

    write, submit = runner.calls
    path = write.argv[1].removeprefix("of=")
    assert (write.program, write.account) == ("dd", ALICE)
    assert write.stdin == b"#!/bin/bash\ntrue\n"
    assert path.startswith("/home/alice/newt/newt_") and path.endswith(".sh")
    assert submit.argv[-2:] == ("--", path) and "--chdir=/home/alice/newt" in submit.argv


def test_a_generated_script_slurm_refuses_is_removed() -> None:
    runner = ReplayRunner()
    accept_writes(runner)
    runner.on("sbatch", failed("sbatch: error: invalid partition specified: nope"))

    with pytest.raises(BadRequest, match="invalid partition"):
        asyncio.run(machine(runner).submit(ALICE, SCRIPT))

    path = runner.calls_to("dd")[0].argv[1].removeprefix("of=")
    assert [call.argv for call in runner.calls_to("rm")] == [("rm", "-f", "--", path)]


def test_a_script_the_user_named_is_kept_when_slurm_refuses_it() -> None:
    runner = ReplayRunner()
    accept_writes(runner)
    runner.on("sbatch", failed("sbatch: error: invalid partition specified: nope"))
    named = Submission(JobOptions(), script="#!/bin/bash\n", script_path="project/job.sh")

    with pytest.raises(BadRequest):
        asyncio.run(machine(runner).submit(ALICE, named))

    assert runner.calls_to("dd")[0].argv[1] == "of=/home/alice/project/job.sh"
    assert runner.calls_to("rm") == []


def test_a_submit_without_a_clear_answer_keeps_the_script_and_the_next_listing_is_live() -> None:
    store = MemoryStore()
    runner = ReplayRunner()
    accept_writes(runner)
    runner.on("sbatch", TimedOut("sbatch did not finish within 5 s and was killed"))
    runner.on("squeue", listing())

    async def body() -> None:
        await put_snapshot(store)
        ln3 = machine(runner, store=store)
        with pytest.raises(Unavailable):
            await ln3.submit(ALICE, SCRIPT)
        assert not (await ln3.queue(ALICE)).from_snapshot

    asyncio.run(body())
    assert runner.calls_to("rm") == []


def tags_kept_by_the_scheduler(runner: ReplayRunner) -> None:
    """Answer tag lookups with the ``--comment`` of every sbatch call so far, as Slurm
    keeps it with the job (the ids are the ones the sbatch rules gave: 10, 11, ...)."""

    def lookup(call: Call) -> Completed:
        comments = [
            argument.removeprefix("--comment=")
            for sbatch in runner.calls_to("sbatch")
            for argument in sbatch.argv
            if argument.startswith("--comment=")
        ]
        tags = {str(10 + n): tag for n, tag in enumerate(comments)}
        asked = [arg.removeprefix("--jobs=") for arg in call.argv if arg.startswith("--jobs=")]
        return ok(json.dumps({jobid: tags[jobid] for jobid in asked or tags}))

    runner.on(lambda argv: "--tags" in argv, lookup)


def test_a_retried_submit_with_the_same_key_submits_once() -> None:
    runner = ReplayRunner()
    accept_writes(runner)
    tags_kept_by_the_scheduler(runner)
    runner.on("sbatch", ok("11\n"))
    runner.on("sbatch", ok("10\n"), times=1)  # newer rules win: this one answers first

    async def body() -> None:
        ln3 = machine(runner)
        first = await ln3.submit(ALICE, SCRIPT, idempotency_key="k1")
        again = await ln3.submit(ALICE, SCRIPT, idempotency_key="k1")
        assert first == again == "10"
        other = Submission(JobOptions(name="other"), script="#!/bin/bash\ntrue\n")
        with pytest.raises(Conflict, match="different request"):
            await ln3.submit(ALICE, other, idempotency_key="k1")
        # the key is alice's: bob's same key is another submit
        assert await ln3.submit(BOB, SCRIPT, idempotency_key="k1") == "11"

    asyncio.run(body())
    assert len(runner.calls_to("sbatch")) == 2


def test_racing_retries_with_the_same_key_submit_once() -> None:
    runner = ReplayRunner()
    accept_writes(runner)
    tags_kept_by_the_scheduler(runner)
    answered = asyncio.Event()
    runner.on("sbatch", ok("10\n"), gate=answered)

    async def body() -> None:
        ln3 = machine(runner)
        tries = [
            asyncio.ensure_future(ln3.submit(ALICE, SCRIPT, idempotency_key="k")) for _ in range(5)
        ]
        await until(lambda: len(runner.calls_to("sbatch")) == 1)
        answered.set()
        assert await asyncio.gather(*tries) == ["10"] * 5

    asyncio.run(body())
    assert len(runner.calls_to("sbatch")) == 1


def test_a_retry_after_the_store_lost_its_record_finds_the_job_by_its_tag() -> None:
    runner = ReplayRunner()
    accept_writes(runner)
    tags_kept_by_the_scheduler(runner)
    runner.on("sbatch", ok("10\n"))

    async def body() -> None:
        assert await machine(runner).submit(ALICE, SCRIPT, idempotency_key="k") == "10"
        # a restarted gateway: empty idempotency records, the scheduler still has the job
        assert await machine(runner).submit(ALICE, SCRIPT, idempotency_key="k") == "10"

    asyncio.run(body())
    assert len(runner.calls_to("sbatch")) == 1


# survey (the monitor's probe)


def test_a_survey_is_one_listing_of_every_job_and_one_of_the_nodes() -> None:
    runner = ReplayRunner()
    runner.on(["squeue", "--all"], listing(record("7"), record("8", "PENDING", owner=BOB)))
    runner.on("sinfo", '{"work": {"idle": 2, "alloc": 2}}')

    jobs, nodes = asyncio.run(machine(runner).survey(ALICE))

    assert [job.id for job in jobs] == ["7", "8"]
    assert nodes == {"work": {"idle": 2, "alloc": 2}}
    assert sorted(runner.programs()) == ["sinfo", "squeue"]
