"""Slurm's argument builders and parsers, on output recorded from Slurm 22.05 here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hpcgate.errors import BadRequest, Forbidden, NotFound, Unavailable
from hpcgate.jobspec import JobOptions
from hpcgate.runners.base import Completed
from hpcgate.schedulers.base import JobRecord
from hpcgate.schedulers.slurm import SEP, Slurm

slurm = Slurm()


def done(
    stdout: str = "", stderr: str = "", returncode: int = 0, argv: str = "squeue"
) -> Completed:
    return Completed(argv=(argv,), returncode=returncode, stdout=stdout, stderr=stderr)


def line(*cells: str) -> str:
    return SEP.join(cells) + SEP


# -- sbatch -----------------------------------------------------------------------------


def test_submit_argv_passes_every_option_as_one_option_value_argument() -> None:
    options = JobOptions(
        working_dir="/home/alice/run",
        name="--wrap=rm -rf /",
        time_limit_minutes=10,
        partition="debug",
        cores=4,
        memory_mb=2048,
        nodes=2,
        script_args=("--partition=x", "$(id)"),
    )
    assert slurm.submit_argv("/home/alice/job.sh", options) == [
        "sbatch",
        "--parsable",
        "--chdir=/home/alice/run",
        "--job-name=--wrap=rm -rf /",
        "--time=10",
        "--partition=debug",
        "--ntasks=4",
        "--mem=2048M",
        "--nodes=2",
        "--",
        "/home/alice/job.sh",
        "--partition=x",
        "$(id)",
    ]


def test_submit_argv_sets_only_what_was_asked() -> None:
    assert slurm.submit_argv("/s.sh", JobOptions()) == ["sbatch", "--parsable", "--", "/s.sh"]


def test_renamed_commands() -> None:
    renamed = Slurm({"sbatch": "yhbatch", "squeue": "yhq"})
    assert renamed.submit_argv("/s.sh", JobOptions())[0] == "yhbatch"
    assert renamed.queue_argv("alice")[0] == "yhq"
    assert renamed.history_argv("1")[0] == "sacct"
    with pytest.raises(ValueError, match="unknown Slurm command 'qsub'"):
        Slurm({"qsub": "x"})


@pytest.mark.parametrize(("stdout", "jobid"), [("4816214\n", "4816214"), ("77;cluster2\n", "77")])
def test_parse_submit(stdout: str, jobid: str) -> None:
    assert slurm.parse_submit(done(stdout, argv="sbatch")) == jobid


@pytest.mark.parametrize(
    ("stderr", "error", "words"),
    [
        (
            "sbatch: error: invalid partition specified: nosuch\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
            BadRequest,
            "Invalid partition name specified",
        ),
        (
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
            "(connect failure)\n",
            Unavailable,
            "cannot be reached",
        ),
        ("sbatch: error: Unable to open file /x/y.sh\n", BadRequest, "/x/y.sh does not exist"),
    ],
)
def test_submit_errors(stderr: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        slurm.parse_submit(done(stderr=stderr, returncode=1, argv="sbatch"))


# -- squeue -----------------------------------------------------------------------------

QUEUE = "\n".join(
    [
        line("2", "j.sh", "alice", "PENDING", "work", "0:00", "2", "2", "(JobHeldUser)", "0"),
        line("1", "a|b c", "alice", "RUNNING", "work", "1:02:03", "1", "1", "node1", "0"),
        line(
            "3",
            "long name",
            "alice",
            "FAILED",
            "work",
            "0:00",
            "1",
            "1",
            "(NonZeroExitCode)",
            "768",
        ),
        "garbage that is not a row",
        "",
    ]
)


def test_parse_queue_keeps_names_with_delimiters_and_spaces() -> None:
    jobs = slurm.parse_queue(done(QUEUE))
    assert [job.id for job in jobs] == ["2", "1", "3"]
    held, running, failed = jobs
    assert held.status == "Pending" and held.nodelist == "(JobHeldUser)" and held.nodes == 2
    assert running.name == "a|b c" and running.elapsed == "1:02:03" and running.nodelist == "node1"
    assert failed.exit_code == "3:0" and failed.finished


def test_queue_argv_selects_the_user_and_a_delimited_format() -> None:
    argv = slurm.queue_argv("alice")
    assert argv[:3] == ["squeue", "--noheader", "--user=alice"]
    assert argv[-1].startswith("--Format=JobID:\x1f,")


def test_live_job_argv_includes_finished_jobs() -> None:
    assert slurm.live_job_argv("42")[2:4] == ["--states=all", "--jobs=42"]


def test_an_unknown_job_is_an_empty_live_view() -> None:
    failed = done(stderr="slurm_load_jobs error: Invalid job id specified\n", returncode=1)
    assert slurm.parse_queue(failed) == []


def test_a_dead_controller_is_unavailable() -> None:
    failed = done(
        stderr="slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
        returncode=1,
    )
    with pytest.raises(Unavailable):
        slurm.parse_queue(failed)


@pytest.mark.parametrize(
    ("state", "status", "finished"),
    [
        ("CANCELLED by 1001", "Cancelled", True),
        ("CANCELLED+", "Cancelled", True),
        ("TIMEOUT", "Timeout", True),
        ("OUT_OF_MEMORY", "Out_of_memory", True),
        ("COMPLETING", "Completing", False),
        ("PENDING", "Pending", False),
        ("", "Unknown", False),
    ],
)
def test_state_words(state: str, status: str, finished: bool) -> None:
    record = JobRecord("1", "n", "u", state, "p", "0:00", 1, None, "", "0:0")
    assert (record.status, record.finished) == (status, finished)


# -- sacct and the merged per-job view ---------------------------------------------------

PLACEHOLDER = "\n".join(
    [
        line(
            "3", "allocation", "alice", "PENDING", "", "00:00:00", "0", "", "None assigned", "0:0"
        ),
        line("3.batch", "batch", "", "RUNNING", "", "00:00:00", "1", "1", "node1", "0:0"),
        line("3.extern", "extern", "", "RUNNING", "", "00:00:00", "1", "1", "node1", "0:0"),
    ]
)
SYNCED = "\n".join(
    [
        line("3", "hello", "alice", "FAILED", "work", "00:00:04", "1", "", "node1", "3:0"),
        line("3.batch", "batch", "", "FAILED", "", "00:00:04", "1", "1", "node1", "3:0"),
        line("3.extern", "extern", "", "COMPLETED", "", "00:00:04", "1", "1", "node1", "0:0"),
    ]
)


def test_history_argv_asks_for_every_user_so_ownership_can_be_checked() -> None:
    argv = slurm.history_argv("3")
    assert "--allusers" in argv and "--jobs=3" in argv and "--delimiter=\x1f" in argv


def test_parse_history() -> None:
    job, batch, extern = slurm.parse_history(done(SYNCED, argv="sacct"))
    assert (job.id, job.name, job.status, job.exit_code, job.tasks) == (
        "3",
        "hello",
        "Failed",
        "3:0",
        None,
    )
    assert (batch.id, batch.tasks, extern.status) == ("3.batch", 1, "Completed")


def test_only_a_settled_record_of_an_ended_job_is_final() -> None:
    ended_placeholder = PLACEHOLDER.replace("PENDING", "COMPLETED", 1)
    assert slurm.history_is_final("3", slurm.parse_history(done(SYNCED)))
    assert not slurm.history_is_final("3", slurm.parse_history(done(ended_placeholder)))
    assert not slurm.history_is_final("3", slurm.parse_history(done(PLACEHOLDER)))
    running = SYNCED.replace("FAILED", "RUNNING", 1)
    assert not slurm.history_is_final("3", slurm.parse_history(done(running)))
    assert not slurm.history_is_final("3", [])


def test_the_live_row_replaces_accountings_placeholder() -> None:
    live = slurm.parse_queue(
        done(line("3", "hello", "alice", "RUNNING", "work", "0:05", "1", "1", "node1", "0"))
    )[0]
    rows = slurm.merge_job_views("3", live, slurm.parse_history(done(PLACEHOLDER)))
    assert [row.id for row in rows] == ["3", "3.batch", "3.extern"]
    assert (rows[0].name, rows[0].partition, rows[0].status, rows[0].elapsed) == (
        "hello",
        "work",
        "Running",
        "00:00:05",
    )


def test_a_finished_job_shows_the_nodes_it_ran_on_not_the_reason() -> None:
    live = slurm.parse_queue(
        done(
            line(
                "3",
                "hello",
                "alice",
                "FAILED",
                "work",
                "0:04",
                "1",
                "1",
                "(NonZeroExitCode)",
                "768",
            )
        )
    )[0]
    rows = slurm.merge_job_views("3", live, slurm.parse_history(done(SYNCED)))
    assert (rows[0].nodelist, rows[0].exit_code) == ("node1", "3:0")
    pending = replace(live, state="PENDING", nodelist="(Priority)")
    assert (
        slurm.merge_job_views("3", pending, slurm.parse_history(done(PLACEHOLDER)))[0].nodelist
        == "(Priority)"
    )


def test_a_job_only_the_controller_knows() -> None:
    live = slurm.parse_queue(
        done(line("9", "young", "alice", "PENDING", "work", "0:00", "2", "2", "(Priority)", "0"))
    )[0]
    rows = slurm.merge_job_views("9", live, [])
    assert len(rows) == 1 and rows[0].status == "Pending" and rows[0].elapsed == "00:00:00"


def test_a_job_only_accounting_knows() -> None:
    rows = slurm.merge_job_views("3", None, slurm.parse_history(done(SYNCED)))
    assert rows[0].status == "Failed" and rows[0].partition == "work"


def test_a_job_nobody_knows() -> None:
    assert slurm.merge_job_views("3", None, []) == []


@pytest.mark.parametrize(
    ("squeue", "sacct"),
    [
        ("0:00", "00:00:00"),
        ("1:02", "00:01:02"),
        ("3:04:05", "03:04:05"),
        ("2-03:04:05", "2-03:04:05"),
    ],
)
def test_elapsed_is_shown_as_sacct_does(squeue: str, sacct: str) -> None:
    live = JobRecord("1", "n", "alice", "RUNNING", "work", squeue, 1, None, "node1", "0:0")
    assert slurm.merge_job_views("1", live, [])[0].elapsed == sacct


# -- scancel and errors -----------------------------------------------------------------


def test_cancel_argv_ends_options_before_the_id() -> None:
    assert slurm.cancel_argv("12") == ["scancel", "--", "12"]


def test_cancel_refused_by_slurm_is_forbidden() -> None:
    refused = done(
        stderr="scancel: error: Kill job error on job id 5: Access/permission denied\n",
        returncode=210,
        argv="scancel",
    )
    with pytest.raises(Forbidden):
        slurm.check_cancel(refused)


def test_cancel_error_with_exit_status_zero_still_counts() -> None:
    quiet = done(
        stderr="scancel: error: Kill job error on job id 5: Invalid job id specified\n",
        argv="scancel",
    )
    with pytest.raises(NotFound):
        slurm.check_cancel(quiet)
    slurm.check_cancel(done(argv="scancel"))
