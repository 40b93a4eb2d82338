"""Slurm's argument builders and parsers, on output recorded from Slurm 22.05 here."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from hpcgate.config import Config, ConfigError
from hpcgate.errors import BadRequest, Forbidden, NotFound, Unavailable
from hpcgate.jobspec import JobOptions
from hpcgate.process import Completed
from hpcgate.schedulers import slurm_rpc
from hpcgate.schedulers.base import JobRecord
from hpcgate.schedulers.slurm import Slurm, classified, job_row, output_argv, parse_output_rows
from hpcgate.wiring import build_gateway

slurm = Slurm()


def delimiter_of(argv: list[str]) -> str:
    found = re.search("\x1f[0-9a-f]{16}\x1f", " ".join(argv))
    assert found is not None, argv
    return found.group()


def printed(argv: list[str], *rows: tuple[str, ...], stderr: str = "", code: int = 0) -> Completed:
    """What ``argv`` prints for ``rows``: each field followed by its delimiter, one row a
    line, as squeue --Format, sacct --parsable and sinfo --format do."""
    delimiter = delimiter_of(argv)
    stdout = "".join(delimiter.join(row) + delimiter + "\n" for row in rows)
    return Completed(argv=tuple(argv), returncode=code, stdout=stdout, stderr=stderr)


def failed(argv: list[str], stderr: str, code: int = 1) -> Completed:
    return Completed(argv=tuple(argv), returncode=code, stdout="", stderr=stderr)


def queue(*rows: tuple[str, ...]) -> Completed:
    return printed(slurm.all_jobs_argv(), *rows)


def history(*rows: tuple[str, ...]) -> Completed:
    return printed(slurm.history_argv("3"), *rows)


def done(
    stdout: str = "", stderr: str = "", returncode: int = 0, argv: str = "sbatch"
) -> Completed:
    return Completed(argv=(argv,), returncode=returncode, stdout=stdout, stderr=stderr)


def qrow(
    jobid: str,
    name: str,
    state: str = "RUNNING",
    *,
    uid: str = "1001",
    user: str = "alice",
    used: str = "0:05",
    nodes: str = "1",
    reason: str = "node1",
    status: str = "0",
) -> tuple[str, ...]:
    """One squeue row in the module's column order (id first, name last)."""
    return (jobid, uid, user, state, "work", used, nodes, nodes, reason, status, name)


def hrow(
    jobid: str,
    name: str,
    state: str,
    *,
    uid: str = "1001",
    user: str = "alice",
    partition: str = "work",
    elapsed: str = "00:00:04",
    tasks: str = "",
    nodelist: str = "node1",
    code: str = "0:0",
) -> tuple[str, ...]:
    """One sacct row in the module's column order (id first, name last)."""
    return (jobid, uid, user, state, partition, elapsed, "1", tasks, nodelist, code, name)


def srow(jobid: str, name: str, state: str, code: str = "0:0") -> tuple[str, ...]:
    """A step row: sacct leaves the uid and user of steps empty."""
    return (jobid, "", "", state, "", "00:00:04", "1", "1", "node1", code, name)


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

QUEUE = queue(
    qrow("2", "j.sh", "PENDING", nodes="2", reason="(JobHeldUser)"),
    qrow("1", "a|b c", used="1:02:03"),
    qrow("3", "long name", "FAILED", reason="(NonZeroExitCode)", status="768"),
)


def test_parse_queue() -> None:
    jobs = slurm.parse_queue(QUEUE)
    assert [job.id for job in jobs] == ["2", "1", "3"]
    held, running, failed_job = jobs
    assert held.status == "Pending" and held.nodelist == "(JobHeldUser)" and held.nodes == 2
    assert running.name == "a|b c" and running.elapsed == "1:02:03" and running.nodelist == "node1"
    assert failed_job.exit_code == "3:0" and failed_job.finished
    assert {job.uid for job in jobs} == {1001}


def test_queue_argv_selects_the_user_and_a_format_with_the_id_first_and_the_name_last() -> None:
    argv = slurm.queue_argv("alice")
    assert argv[:3] == ["squeue", "--noheader", "--user=alice"]
    delimiter = delimiter_of(argv)
    fields = argv[-1].removeprefix("--Format=").split(f"{delimiter},")
    assert (
        fields[0] == "JobArrayID:" and fields[1] == "UserID:" and fields[-1] == f"Name:{delimiter}"
    )
    assert not delimiter[0].isdigit()  # squeue would read leading digits as a width


def test_every_call_gets_its_own_delimiter() -> None:
    calls = [
        slurm.queue_argv("alice"),
        slurm.queue_argv("alice"),
        slurm.all_jobs_argv(),
        slurm.live_job_argv("1"),
        slurm.history_argv("1"),
        slurm.nodes_argv(),
    ]
    assert len({delimiter_of(argv) for argv in calls}) == len(calls)


def test_live_job_argv_includes_finished_jobs() -> None:
    assert slurm.live_job_argv("42")[2:4] == ["--states=all", "--jobs=42"]


def test_an_unknown_job_is_an_empty_live_view() -> None:
    unknown = failed(slurm.live_job_argv("9"), "slurm_load_jobs error: Invalid job id specified\n")
    assert slurm.parse_queue(unknown) == []


def test_a_dead_controller_is_unavailable() -> None:
    dead = failed(
        slurm.all_jobs_argv(),
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
    )
    with pytest.raises(Unavailable):
        slurm.parse_queue(dead)


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
    record = classified(JobRecord("1", "n", "u", state, "p", "0:00", 1, None, "", "0:0"))
    assert (record.status, record.finished) == (status, finished)


# -- names a user writes cannot move a column ------------------------------------------------

CONTROL_NAMES = [chr(code) for code in range(1, 32)] + ["\x7f"]
TRICKY_NAMES = [
    "|",
    "a|b|c",
    " padded  ",
    "tab\there",
    "x\x1fy\x1ez",
    "line\nbreak",
    "ends with a newline\n",
    "\n",
    "\n\n2\x1f1002\x1fbob",
    "é ✓ 名前",
    "N" * 1024,
]
BOB = qrow("7", "bob's job", "PENDING", uid="1002", user="bob", reason="(JobHeldUser)")


def forged_rows(delimiter: str) -> list[str]:
    """Names that print as whole rows of bob's, with every separator one might guess,
    among them ``delimiter``: one an earlier call was given (this call's is unknowable)."""
    bob_cancelled = qrow("7", "FORGED", "CANCELLED", uid="1002", user="bob", reason="nodeX")
    fake_job = qrow("99", "FAKE", uid="1002", user="bob")
    names = []
    for row in (bob_cancelled, fake_job):
        for sep in ("\x1f", "\x1e", "|", "\t", " ", delimiter):
            for end in ("\n", "\x1e", "\r\n", ""):
                names.append("x" + end + sep.join(row) + sep + end)
    return names


@pytest.mark.parametrize("name", CONTROL_NAMES + TRICKY_NAMES)
def test_any_name_round_trips_and_moves_no_column(name: str) -> None:
    alice = qrow("5", name, "PENDING", reason="(JobHeldUser)")
    jobs = slurm.parse_queue(queue(alice, BOB, (*alice[:-1], name + "2")))
    assert [(job.id, job.name, job.uid) for job in jobs] == [
        ("5", name, 1001),
        ("7", "bob's job", 1002),
    ]  # the second "5" is a repeat: dropped
    detail = slurm.parse_history(
        history(hrow("5", name, "PENDING"), srow("5.batch", "batch", "RUNNING"))
    )
    assert [(row.id, row.name, row.uid) for row in detail] == [
        ("5", name, 1001),
        ("5.batch", "batch", 1001),
    ]


def test_names_that_look_like_rows_of_another_user_stay_names() -> None:
    earlier, argv = slurm.all_jobs_argv(), slurm.all_jobs_argv()
    names = forged_rows(delimiter_of(earlier))
    rows = [qrow(str(10 + index), name, "PENDING") for index, name in enumerate(names)]
    jobs = slurm.parse_queue(printed(argv, rows[0], BOB, *rows[1:]))
    assert len(jobs) == len(names) + 1
    assert [job.name for job in jobs if job.uid == 1001] == names
    bobs = [job for job in jobs if job.uid == 1002]
    assert [(job.id, job.name, job.state, job.nodelist) for job in bobs] == [
        ("7", "bob's job", "PENDING", "(JobHeldUser)")
    ]


def test_forged_accounting_rows_neither_take_over_the_job_nor_add_steps() -> None:
    argv = slurm.history_argv("5")
    forged = [
        *forged_rows(delimiter_of(slurm.history_argv("5"))),
        "x\n5\x1f1002\x1fbob\x1fCOMPLETED\x1fwork\x1f00:00:01\x1f1\x1f\x1fnode1\x1f0:0\x1fmine",
        "x\n5.9\x1f\x1f\x1fCOMPLETED\x1f\x1f00:00:01\x1f1\x1f1\x1fnode1\x1f0:0\x1fstep\x1f",
    ]
    for name in forged:
        rows = slurm.parse_history(
            printed(argv, hrow("5", name, "RUNNING"), srow("5.batch", "batch", "RUNNING"))
        )
        view = slurm.merge_job_views("5", None, rows)
        assert [(row.id, row.uid) for row in view] == [("5", 1001), ("5.batch", 1001)]
        assert view[0].name == name


def test_a_row_that_does_not_validate_is_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = [
        qrow("5x", "bad id"),
        qrow("5", "bad uid", uid="alice"),
        qrow("5", "bad uid", uid=""),
        qrow("5", "bad state", "running; rm"),
        qrow("5", "bad count", nodes="two"),
        qrow("5", "bad time", used="yesterday"),
        qrow("5", "reason on two lines", reason="(a\nb)"),
        qrow("5.batch", "a step is no queue row"),
    ]
    with caplog.at_level(logging.WARNING, logger="hpcgate.schedulers.slurm"):
        jobs = slurm.parse_queue(queue(*bad, BOB))
    assert [job.id for job in jobs] == ["7"]
    assert sum("does not validate" in message for message in caplog.messages) == len(bad)


def test_output_not_framed_by_the_delimiter_is_not_read() -> None:
    argv = slurm.all_jobs_argv()
    other = "\x1f" + "0" * 16 + "\x1f"
    stdout = other.join(BOB) + other + "\n" + "7|1002|bob|PENDING|work\n"
    assert slurm.parse_queue(Completed(tuple(argv), 0, stdout, "")) == []
    with pytest.raises(ValueError, match="delimiter"):
        slurm.parse_queue(done("7\n", argv="squeue"))


@pytest.mark.parametrize(
    "jobid", ["123", "123_4", "123_[1-3]", "123_[1,5-9%2]", "123+1", "4294967293"]
)
def test_job_id_forms(jobid: str) -> None:
    assert [job.id for job in slurm.parse_queue(queue(qrow(jobid, "n")))] == [jobid]


@pytest.mark.parametrize(
    "step", ["123.batch", "123.extern", "123.0", "123_4.batch", "123+1.0", "123.0+1"]
)
def test_step_id_forms(step: str) -> None:
    rows = slurm.parse_history(
        history(hrow(step.split(".")[0], "n", "RUNNING"), srow(step, "s", "RUNNING"))
    )
    assert [row.id for row in rows][1:] == [step]


# -- sinfo -------------------------------------------------------------------------------


def test_parse_nodes() -> None:
    argv = slurm.nodes_argv()
    assert argv[:2] == ["sinfo", "--noheader"] and argv[2].startswith("--format=%R\x1f")
    nodes = slurm.parse_nodes(
        printed(
            argv,
            ("work", "idle", "2"),
            ("work", "down*", "1"),
            ("debug", "mix", "1"),
            ("debug", "mix~", "1"),
            ("bad name", "idle", "1"),
            ("work", "idle", "many"),
            ("work", "IDLE\n", "1"),
        )
    )
    assert nodes == {"work": {"idle": 2, "down": 1}, "debug": {"mix": 2}}


# -- sacct and the merged per-job view ---------------------------------------------------

PLACEHOLDER = (
    hrow("3", "allocation", "PENDING", partition="", elapsed="00:00:00", nodelist="None assigned"),
    srow("3.batch", "batch", "RUNNING"),
    srow("3.extern", "extern", "RUNNING"),
)
SYNCED = (
    hrow("3", "hello", "FAILED", code="3:0"),
    srow("3.batch", "batch", "FAILED", "3:0"),
    srow("3.extern", "extern", "COMPLETED"),
)


def test_history_argv_asks_for_every_user_so_ownership_can_be_checked() -> None:
    argv = slurm.history_argv("3")
    assert "--allusers" in argv and "--jobs=3" in argv and "--parsable" in argv
    assert (
        argv[-1]
        == "--format=JobID,UID,User,State,Partition,Elapsed,NNodes,NTasks,NodeList,ExitCode,JobName"
    )


def test_parse_history() -> None:
    job, batch, extern = slurm.parse_history(history(*SYNCED))
    assert (job.id, job.name, job.status, job.exit_code, job.tasks, job.uid) == (
        "3",
        "hello",
        "Failed",
        "3:0",
        None,
        1001,
    )
    assert (batch.id, batch.tasks, batch.uid, extern.status) == ("3.batch", 1, 1001, "Completed")


def test_only_a_settled_record_of_an_ended_job_is_final() -> None:
    ended_placeholder = (replace_state(PLACEHOLDER[0], "COMPLETED"), *PLACEHOLDER[1:])
    assert slurm.history_is_final("3", slurm.parse_history(history(*SYNCED)))
    assert not slurm.history_is_final("3", slurm.parse_history(history(*ended_placeholder)))
    assert not slurm.history_is_final("3", slurm.parse_history(history(*PLACEHOLDER)))
    running = (replace_state(SYNCED[0], "RUNNING"), *SYNCED[1:])
    assert not slurm.history_is_final("3", slurm.parse_history(history(*running)))
    assert not slurm.history_is_final("3", [])


def replace_state(row: tuple[str, ...], state: str) -> tuple[str, ...]:
    return (*row[:3], state, *row[4:])


def live(*row: str) -> JobRecord:
    return slurm.parse_queue(queue(row))[0]


def test_the_live_row_replaces_accountings_placeholder() -> None:
    rows = slurm.merge_job_views(
        "3", live(*qrow("3", "hello")), slurm.parse_history(history(*PLACEHOLDER))
    )
    assert [row.id for row in rows] == ["3", "3.batch", "3.extern"]
    assert (rows[0].name, rows[0].partition, rows[0].status, rows[0].elapsed, rows[0].uid) == (
        "hello",
        "work",
        "Running",
        "00:00:05",
        1001,
    )


def test_a_finished_job_shows_the_nodes_it_ran_on_not_the_reason() -> None:
    ended = live(
        *qrow("3", "hello", "FAILED", used="0:04", reason="(NonZeroExitCode)", status="768")
    )
    rows = slurm.merge_job_views("3", ended, slurm.parse_history(history(*SYNCED)))
    assert (rows[0].nodelist, rows[0].exit_code) == ("node1", "3:0")
    pending = replace(ended, state="PENDING", nodelist="(Priority)")
    assert (
        slurm.merge_job_views("3", pending, slurm.parse_history(history(*PLACEHOLDER)))[0].nodelist
        == "(Priority)"
    )


def test_a_job_only_the_controller_knows() -> None:
    young = live(*qrow("9", "young", "PENDING", used="0:00", nodes="2", reason="(Priority)"))
    rows = slurm.merge_job_views("9", young, [])
    assert len(rows) == 1 and rows[0].status == "Pending" and rows[0].elapsed == "00:00:00"


def test_a_job_only_accounting_knows() -> None:
    rows = slurm.merge_job_views("3", None, slurm.parse_history(history(*SYNCED)))
    assert rows[0].status == "Failed" and rows[0].partition == "work"


def test_a_job_nobody_knows() -> None:
    assert slurm.merge_job_views("3", None, []) == []


ARRAY_AND_HET = (
    hrow("27668_1", "arr", "COMPLETED"),
    srow("27668_1.batch", "batch", "COMPLETED"),
    hrow("27668_2", "arr", "RUNNING"),
    srow("27668_2.batch", "batch", "RUNNING"),
    hrow("27668_[3-4]", "arr", "PENDING", nodelist="None assigned"),
    hrow("27700+0", "het", "RUNNING"),
    srow("27700+0.batch", "batch", "RUNNING"),
    hrow("27700+1", "het", "RUNNING"),
)


@pytest.mark.parametrize(
    ("jobid", "shown"),
    [
        ("27668_2", ["27668_2", "27668_2.batch"]),
        ("27668_1", ["27668_1", "27668_1.batch"]),
        ("27668_[3-4]", ["27668_[3-4]"]),
        ("27700+1", ["27700+1"]),
        ("27700", ["27700+0", "27700+0.batch"]),  # the id sbatch printed: the leader
        ("27668", ["27668_1", "27668_1.batch"]),  # the id sbatch printed: a task of it
    ],
)
def test_array_tasks_and_het_components_by_their_own_ids(jobid: str, shown: list[str]) -> None:
    rows = slurm.merge_job_views(jobid, None, slurm.parse_history(history(*ARRAY_AND_HET)))
    assert [row.id for row in rows] == shown


def test_a_running_array_task_is_found_live_by_the_id_listings_show() -> None:
    tasks = slurm.parse_queue(queue(qrow("27668_2", "arr"), qrow("27668_[3-4]", "arr", "PENDING")))
    running = job_row("27668_2", tasks)
    assert running is not None and running.status == "Running" and not running.finished
    rows = slurm.merge_job_views("27668_2", running, slurm.parse_history(history(*ARRAY_AND_HET)))
    assert [row.id for row in rows] == ["27668_2", "27668_2.batch"]


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
    running = JobRecord("1", "n", "alice", "RUNNING", "work", squeue, 1, None, "node1", "0:0")
    assert slurm.merge_job_views("1", running, [])[0].elapsed == sacct


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


@pytest.mark.parametrize(
    "stderr",
    [
        "squeue: error: Invalid job id: 0\n",
        "squeue: error: Invalid job id: 4294967296\n",
        "sacct: fatal: Bad job array element specified: 2107\n",
    ],
)
def test_an_id_no_job_can_have_is_a_bad_request(stderr: str) -> None:
    with pytest.raises(BadRequest, match="cannot have such a job id"):
        slurm.parse_queue(failed(slurm.live_job_argv("0"), stderr))


def test_an_id_slurm_does_not_know_is_not_found() -> None:
    unknown = failed(slurm.cancel_argv("99999"), "scancel: error: Invalid job id specified\n")
    with pytest.raises(NotFound):
        slurm.check_cancel(unknown)


# -- the other parsers of user-written text: ended jobs, output paths, tags --------------


def erow(jobid: str, name: str, state: str = "COMPLETED", **fields: str) -> tuple[str, ...]:
    """One row of the ended-jobs listing: an accounting row with End and Reason before
    the name."""
    *recorded, _ = hrow(jobid, name, state, **fields)
    return (*recorded, "2026-11-28T12:00:00", "None", name)


def esrow(jobid: str, name: str) -> tuple[str, ...]:
    *recorded, _ = srow(jobid, name, "COMPLETED")
    return (*recorded, "2026-11-28T12:00:00", "None", name)


BOB_ENDED = erow("7", "bob's job", uid="1002", user="bob")


Shown = tuple[str, str, int | None, str]


def endings_of(*rows: tuple[str, ...], argv: list[str] | None = None) -> list[list[Shown]]:
    argv = argv or slurm.ended_jobs_argv(0.0) or []
    return [
        [(row.id, row.name, row.uid, row.state) for row in ending.rows]
        for ending in slurm.parse_ended_jobs(printed(argv, *rows))
    ]


@pytest.mark.parametrize("name", CONTROL_NAMES + TRICKY_NAMES)
def test_ended_jobs_any_name_round_trips_and_moves_no_column(name: str) -> None:
    alice = erow("5", name)
    assert endings_of(alice, esrow("5.batch", name), BOB_ENDED, (*alice[:-1], name + "2")) == [
        [("5", name, 1001, "COMPLETED"), ("5.batch", name, 1001, "COMPLETED")],
        [("7", "bob's job", 1002, "COMPLETED")],
    ]  # the second "5" is a repeat: dropped


def test_ended_jobs_already_settled_are_left_out_with_their_steps() -> None:
    argv = slurm.ended_jobs_argv(0.0) or []
    rows = (erow("5", "a"), esrow("5.batch", "a"), BOB_ENDED, erow("8_2", "b"))
    settled = slurm.parse_ended_jobs_except(printed(argv, *rows), {"5", "8_2"})
    assert [[row.id for row in ending.rows] for ending in settled] == [["7"]]
    assert len(slurm.parse_ended_jobs(printed(argv, *rows))) == 3


def test_ended_jobs_names_that_look_like_rows_of_another_user_stay_names() -> None:
    earlier, argv = slurm.ended_jobs_argv(0.0) or [], slurm.ended_jobs_argv(0.0) or []
    names = [
        *forged_rows(delimiter_of(earlier)),
        "x\n7" + delimiter_of(earlier) + "1002\x1fbob\x1fCANCELLED",
        "x\n7\x1f1002\x1fbob\x1fCANCELLED\x1fwork\x1f00:00:01\x1f1\x1f\x1fnodeX\x1f0:0"
        "\x1f2026-11-28T12:00:00\x1fNone\x1fFORGED\x1f",
    ]
    rows = [erow(str(10 + index), name) for index, name in enumerate(names)]
    endings = endings_of(rows[0], BOB_ENDED, *rows[1:], argv=argv)
    assert [ending[0][1] for ending in endings if ending[0][2] == 1001] == names
    assert [ending for ending in endings if ending[0][2] != 1001] == [
        [("7", "bob's job", 1002, "COMPLETED")]
    ]


def orow(jobid: str, name: str, *, uid: str = "1001", user: str = "alice", path: str = "out.txt",
         workdir: str = "/home/alice") -> tuple[str, ...]:  # fmt: skip
    """One row of the output-paths listing (the output listing's column order, the name last)."""
    return (jobid, jobid, jobid, "N/A", uid, user, "COMPLETED", "node1", workdir, path, path, name)


BOB_OUTPUT = orow("7", "bob's job", uid="1002", user="bob", path="bob.out", workdir="/home/bob")


def output_rows(
    *rows: tuple[str, ...], argv: list[str] | None = None
) -> list[tuple[str, int, str, str, str, str]]:
    argv = argv or output_argv(slurm, "5")
    return [
        (row.jobid, row.uid, row.name, row.workdir, row.stdout, row.stderr)
        for row in parse_output_rows(printed(argv, *rows))
    ]


@pytest.mark.parametrize("text", CONTROL_NAMES + TRICKY_NAMES)
def test_output_paths_any_name_or_path_round_trips_and_moves_no_column(text: str) -> None:
    alice = orow("5", text, path=text, workdir="/home/alice/" + text)
    assert output_rows(alice, BOB_OUTPUT) == [
        ("5", 1001, text, "/home/alice/" + text, text, text),
        ("7", 1002, "bob's job", "/home/bob", "bob.out", "bob.out"),
    ]


def test_output_paths_and_names_that_look_like_rows_of_another_user_stay_text() -> None:
    earlier, argv = output_argv(slurm, "5"), output_argv(slurm, "5")
    forged = [
        "x" + end + sep.join(BOB_OUTPUT) + sep + end
        for sep in ("\x1f", "\x1e", "|", delimiter_of(earlier))
        for end in ("\n", "\r\n", "")
    ]
    for text in forged:
        rows = output_rows(orow("5", text, path=text, workdir=text), BOB_OUTPUT, argv=argv)
        assert rows == [
            ("5", 1001, text, text, text, text),
            ("7", 1002, "bob's job", "/home/bob", "bob.out", "bob.out"),
        ]


TAG = "hpcgate:" + "a" * 32


def tag_listings(*rows: tuple[str, str]) -> list[Completed]:
    """What each of the tagged-job lookups prints for ``rows`` of (job id, comment)."""
    return [printed(argv, *rows) for argv in slurm.tagged_jobs_argvs("alice", 600)]


def test_tagged_jobs_are_read_exactly() -> None:
    for listing in tag_listings(
        ("11", TAG),
        ("12_[1-3]", TAG),  # a pending array: one submit
        ("12_4", TAG),
        ("13", TAG + "x"),  # another tag that starts the same
        ("14", " " + TAG),
        ("16", f"{TAG}\x1e17\x1f{TAG}"),
    ):
        assert slurm.parse_tagged_jobs(listing, TAG) == ["11", "12"]


def test_a_comment_cannot_forge_a_tagged_row_of_another_job() -> None:
    """alice's own job whose comment prints as further rows "<bob's job> <tag>", with
    every separator one might guess: only the job that carries the tag is found."""
    earlier = delimiter_of(slurm.tagged_jobs_argvs("alice", 600)[0])
    for sep in ("\x1f", "\x1e", "|", " ", earlier):
        for end in ("\n", "\r\n", "\x1e"):
            comment = f"x{end}99{sep}{TAG}{sep}{end}98{sep}{TAG}"
            for listing in tag_listings(("14", comment), ("15", "other")):
                assert slurm.parse_tagged_jobs(listing, TAG) == []
            for listing in tag_listings(("14", comment), ("15", TAG)):
                assert slurm.parse_tagged_jobs(listing, TAG) == ["15"]


def test_each_tagged_lookup_gets_its_own_delimiter_and_an_unknown_job_is_none() -> None:
    squeue, sacct = slurm.tagged_jobs_argvs("alice", 600, "15")
    assert "--jobs=15" in squeue and "--jobs=15" in sacct and "--parsable" in sacct
    assert delimiter_of(squeue) != delimiter_of(sacct)
    gone = failed(squeue, "slurm_load_jobs error: Invalid job id specified\n")
    assert slurm.parse_tagged_jobs(gone, TAG) == []
    with pytest.raises(Unavailable):
        slurm.parse_tagged_jobs(
            failed(squeue, "Unable to contact slurm controller (connect failure)"), TAG
        )


# -- whether accounting lags the controller (sdiag) --------------------------------------


@pytest.mark.parametrize(
    ("stdout", "lagging"),
    [
        ("Agent queue size:     0\nDBD Agent queue size: 0\n", False),
        ("Agent queue size:     3\nDBD Agent queue size: 0\n", False),
        ("Agent queue size:     0\nDBD Agent queue size: 17\n", True),
        ("Agent queue size:     0\n", False),  # no slurmdbd: nothing to lag
    ],
)
def test_accounting_lags_while_the_controller_holds_records_for_it(
    stdout: str, lagging: bool
) -> None:
    argv = slurm.accounting_lag_argv()
    assert argv == ["sdiag"]
    assert slurm.parse_accounting_lag(Completed(tuple(argv), 0, stdout, "")) is lagging


def test_an_sdiag_that_fails_cannot_say_there_is_no_lag() -> None:
    dead = failed(["sdiag"], "sdiag: error: Unable to contact slurm controller (connect failure)")
    with pytest.raises(Unavailable):
        slurm.parse_accounting_lag(dead)
    refused = failed(["sdiag"], "sdiag: error: Access/permission denied")
    assert slurm.parse_accounting_lag(refused) is False  # as before: cannot tell


@pytest.mark.parametrize(
    ("machine", "words"),
    [
        ({"options": {"submit": "rest"}}, "options.submit: 'rest' is not one of 'sbatch', 'rpc'"),
        ({"options": {"submit": "rpc"}}, "the local runner cannot answer sbatch"),
        pytest.param(
            {"runner": "local-helper", "options": {"submit": "rpc"}},
            None,
            marks=pytest.mark.skipif(
                not slurm_rpc.library_installed(), reason="libslurm38 (scripts/cluster) missing"
            ),
        ),
    ],
)
def test_the_submit_path_is_a_choice_per_machine(
    tmp_path: Path, machine: dict[str, object], words: str | None
) -> None:
    config = Config.model_validate(
        {"machines": {"ln3": machine}, "store": {"path": str(tmp_path / "state.sqlite")}}
    )
    if words is None:
        built = build_gateway(config)
        assert built.machine("ln3").scheduler.stand_ins() == {"sbatch": slurm_rpc.__file__}
        return
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_gateway(config)
