"""Keyed submits whose record is in doubt: the job is looked up by its tag, as the user.

In-process, on the real cluster: a Machine with the real local runner and Slurm, and an
idempotency store seeded with the record a dead or confused first attempt left behind.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcgate.accounts import UnixAccount
from hpcgate.config import Config
from hpcgate.errors import TimedOut
from hpcgate.jobspec import JobOptions, Submission
from hpcgate.process import Completed, Limits
from hpcgate.runners.local import LocalRunner
from hpcgate.schedulers.slurm import Slurm
from hpcgate.services.machine import Machine
from hpcgate.services.submits import (
    PROCESS_SPACE,
    SETTLE,
    IdempotentSubmits,
    fingerprint,
    submit_tag,
)
from hpcgate.stores.base import PENDING, UNKNOWN, IdempotencyRecord
from hpcgate.stores.memory import MemoryIdempotencyStore
from hpcgate.stores.sqlite import SqliteIdempotencyStore
from hpcgate.wiring import submit_attempt_limit

WAIT = 5.0  # how long a first attempt may run, for these tests
SCRIPT = "#!/bin/bash\nsleep 60\n"


@pytest.fixture
def names(cluster: None) -> Iterator[list[str]]:
    """Job names whose jobs are cancelled after the test."""
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["scancel", f"--name={name}"], check=False)


def machine(path: Path) -> Machine:
    store = SqliteIdempotencyStore(path)
    return Machine(
        "ln3",
        LocalRunner(),
        Slurm(),
        command_limits=Limits(30, 1 << 20),
        scheduler_limits=Limits(30, 1 << 24),
        submits=IdempotentSubmits(store, ttl=3600, wait=WAIT),
    )


def jobs_named(name: str) -> dict[str, str]:
    """Every job called ``name`` the controller knows: id -> comment (as root)."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--Format=JobID:|,Comment:|"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("|")[:2] for line in listed.stdout.splitlines())


def sbatch_as(user: str, *options: str) -> str:
    done = subprocess.run(
        ["runuser", "-u", user, "--", "sbatch", "--parsable", "--hold", *options, "--wrap=true"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    )
    return done.stdout.strip()


def seed(gateway: Machine, key: str, submission: Submission, record: IdempotencyRecord) -> None:
    assert gateway.submits is not None
    asyncio.run(gateway.submits.store.put(f"alice:ln3:{key}", record, 3600))


def in_doubt(state: str, submission: Submission, *, age: float) -> IdempotencyRecord:
    """The record a first attempt in another process left, begun ``age`` seconds ago."""
    return IdempotencyRecord(
        fingerprint("ln3", submission), state, claimed=time.time() - age, owner="gone:1:dead"
    )


def submit_all(gateway: Machine, key: str, submission: Submission, times: int) -> list[str]:
    alice = UnixAccount.lookup("alice")

    async def all_at_once() -> list[str]:
        return list(
            await asyncio.gather(
                *(gateway.submit(alice, submission, idempotency_key=key) for _ in range(times))
            )
        )

    return asyncio.run(all_at_once())


def test_an_attempt_whose_process_died_before_sbatch_is_taken_over_once(
    names: list[str], tmp_path: Path
) -> None:
    name, key = f"over-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    names.append(name)
    gateway = machine(tmp_path / "state.sqlite")
    submission = Submission(JobOptions(name=name), script=SCRIPT)
    seed(gateway, key, submission, in_doubt(PENDING, submission, age=WAIT + SETTLE + 1))
    jobids = submit_all(gateway, key, submission, 3)
    assert len(set(jobids)) == 1
    assert list(jobs_named(name)) == jobids[:1], "racing retries took the key over once"


def test_an_unknown_outcome_is_found_by_its_tag(names: list[str], tmp_path: Path) -> None:
    name, key = f"found-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    names.append(name)
    gateway = machine(tmp_path / "state.sqlite")
    submission = Submission(JobOptions(name=name), script=SCRIPT)
    tag = submit_tag("alice", "ln3", key, fingerprint("ln3", submission))
    made = sbatch_as("alice", f"--job-name={name}", f"--comment={tag}")
    seed(gateway, key, submission, in_doubt(UNKNOWN, submission, age=0))
    assert submit_all(gateway, key, submission, 2) == [made, made]
    assert list(jobs_named(name)) == [made], "nothing submitted again"


def test_a_lost_record_is_found_by_its_tag(names: list[str], tmp_path: Path) -> None:
    name, key = f"lost-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    names.append(name)
    gateway = machine(tmp_path / "state.sqlite")  # a new file: it may have lost records
    submission = Submission(JobOptions(name=name), script=SCRIPT)
    tag = submit_tag("alice", "ln3", key, fingerprint("ln3", submission))
    made = sbatch_as("alice", f"--job-name={name}", f"--comment={tag}")
    assert submit_all(gateway, key, submission, 1) == [made]
    assert list(jobs_named(name)) == [made]


def test_a_forged_comment_never_yields_another_users_job(names: list[str], tmp_path: Path) -> None:
    name, key = f"forged-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    names.append(name)
    gateway = machine(tmp_path / "state.sqlite")
    submission = Submission(JobOptions(name=name), script=SCRIPT)
    tag = submit_tag("alice", "ln3", key, fingerprint("ln3", submission))
    bobs = sbatch_as("bob", f"--job-name={name}")
    # alice's own job whose comment prints as a second line "<bob's job> <tag>" with
    # the unit separator this lookup used to split on
    sbatch_as("alice", f"--job-name={name}", f"--comment=x\n{bobs}\x1f{tag}")
    seed(gateway, key, submission, in_doubt(UNKNOWN, submission, age=WAIT + SETTLE + 1))
    [jobid] = submit_all(gateway, key, submission, 1)
    assert jobid != bobs
    assert jobs_named(name)[jobid] == tag, "a job of alice's own, submitted with the tag"


def test_a_first_attempt_that_hangs_is_cut_at_its_limit_and_left_in_doubt() -> None:
    """Whatever a submit waits for, it ends by ``wait``: a retry that later finds no job
    and takes the key over can never race a first attempt that is still going."""
    store = MemoryIdempotencyStore()
    submits = IdempotentSubmits(store, ttl=60, wait=0.3)
    started = asyncio.Event()

    async def hangs(tag: str) -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    async def attempt() -> tuple[float, IdempotencyRecord | None]:
        began = time.monotonic()
        with pytest.raises(TimedOut, match="retry with the same Idempotency-Key"):
            await submits.submit("alice", "ln3", "k", "digest", hangs)
        return time.monotonic() - began, await store.get("alice:ln3:k")

    took, record = asyncio.run(attempt())
    assert took < 5
    assert record is not None and record.state == UNKNOWN, "the job may exist: in doubt"


def test_a_retry_here_after_a_cut_waits_for_a_late_job_before_submitting_again() -> None:
    """The cut comes when slurmctld is slow, so the cut sbatch may have sent its request:
    the retry (the client resends at once) looks for that job for ``settle`` seconds."""
    store = MemoryIdempotencyStore()
    submits = IdempotentSubmits(store, ttl=60, wait=0.3)
    submits.settle = 1.0
    submitted: list[str] = []
    cut_at: list[float] = []

    async def slow_then_fast(tag: str) -> str:
        submitted.append(tag)
        if len(submitted) == 1:
            await asyncio.sleep(30)  # cut; slurmctld makes the job a moment later
        return "second"

    async def find(tag: str, within: float) -> str | None:
        late = cut_at and time.monotonic() > cut_at[0] + 0.5
        return "77" if late else None

    async def cut_then_retry() -> str:
        with pytest.raises(TimedOut):
            await submits.submit("alice", "ln3", "k", "digest", slow_then_fast, find)
        cut_at.append(time.monotonic())
        return await submits.submit("alice", "ln3", "k", "digest", slow_then_fast, find)

    assert asyncio.run(cut_then_retry()) == "77"
    assert len(submitted) == 1, "nothing submitted again"


def gone_pid() -> int:
    """The pid of a process of this host that has ended."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


@pytest.mark.parametrize(
    ("where", "ends_its_actions", "taken_over_early"),
    [
        ("this host", True, True),
        ("this host", False, False),  # e.g. over SSH: its actions may still run
        ("another host", True, False),
        ("another pid namespace", True, False),
    ],
)
def test_an_attempt_of_a_gone_gateway_here_is_over_once_its_actions_are_ended(
    where: str, ends_its_actions: bool, taken_over_early: bool
) -> None:
    """A gateway killed mid-submit and started again: its retries need not wait out the
    attempt limit once the runner has ended what the dead process left running."""
    store = MemoryIdempotencyStore()
    submits = IdempotentSubmits(store, ttl=60, wait=60)  # the cut is a minute away
    submits.settle = 0.2
    pid = gone_pid()
    host, space = socket.gethostname(), PROCESS_SPACE
    if where == "another host":
        host = "elsewhere"
    elif where == "another pid namespace":
        space = space + "0"
    owner = f"{host}:{pid}:dead:{space}"
    asked: list[int] = []
    made: list[str] = []

    def end_actions(of: int) -> bool:
        asked.append(of)
        return ends_its_actions

    async def submit(tag: str) -> str:
        made.append(tag)
        return "42"

    async def find(tag: str, within: float) -> str | None:
        return None

    async def retry() -> str:
        record = IdempotencyRecord("digest", PENDING, claimed=time.time(), owner=owner)
        await store.put("alice:ln3:k", record, 60)
        return await asyncio.wait_for(
            submits.submit("alice", "ln3", "k", "digest", submit, find, end_actions), 1.5
        )

    if taken_over_early:
        assert asyncio.run(retry()) == "42"
        assert len(made) == 1 and asked == [pid]
    else:
        with pytest.raises(TimeoutError):
            asyncio.run(retry())
        assert made == []
        assert asked == ([pid] * len(asked) if where == "this host" else [])


def test_the_attempt_limit_covers_the_slowest_machine() -> None:
    config = Config.model_validate(
        {
            "limits": {"timeout": 10, "scheduler_timeout": 5},
            "machines": {
                "fast": {"runner": "local"},
                "slow": {"runner": "local", "limits": {"scheduler_timeout": 100}},
            },
        }
    )
    assert submit_attempt_limit(config) == 10 + 2 * 100


# -- the Slurm side, on recorded output --------------------------------------------------


def completed(stdout: str, returncode: int = 0, stderr: str = "") -> Completed:
    return Completed(("squeue",), returncode, stdout, stderr)


def test_slurm_says_nothing_was_submitted_only_when_it_could_not_connect() -> None:
    slurm = Slurm()
    refused = "sbatch: error: Batch job submission failed: Unable to contact slurm controller"
    assert slurm.submitted_nothing(completed("", 1, refused + " (connect failure)"))
    assert not slurm.submitted_nothing(completed("", 1, "sbatch: error: Socket timed out"))
    assert not slurm.submitted_nothing(completed("12\n"))
