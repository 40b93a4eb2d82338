"""Job output at the service level, on the real cluster: the record kept at submit answers
once the controller no longer does."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hpcgate.accounts import UnixAccount
from hpcgate.errors import Forbidden, NotFound
from hpcgate.process import Completed, Limits
from hpcgate.runners.local import LocalRunner
from hpcgate.schedulers.base import Scheduler
from hpcgate.schedulers.slurm import Slurm
from hpcgate.services.files import FileLimits, FileService
from hpcgate.services.machine import Machine
from hpcgate.services.output import BATCH_SECONDS, JobOutput
from hpcgate.stores.output_paths import MemoryOutputPaths
from tests.conftest import wait_for

LIMITS = Limits(30, 1024 * 1024)


def job_output(store: MemoryOutputPaths, scheduler: Slurm) -> JobOutput:
    runner = LocalRunner()
    machine = Machine("ln3", runner, scheduler, command_limits=LIMITS, scheduler_limits=LIMITS)
    files = FileService("ln3", runner, FileLimits(LIMITS, LIMITS, 1 << 30, 1000))
    return JobOutput(machine, files, store)


@pytest.fixture
def job_dir(cluster: None) -> Iterator[Path]:
    path = Path(f"/home/alice/service-output-{secrets.token_hex(4)}")
    subprocess.run(["runuser", "-u", "alice", "--", "mkdir", str(path)], check=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_record_answers_when_the_controller_does_not(job_dir: Path) -> None:
    alice, bob = UnixAccount.lookup("alice"), UnixAccount.lookup("bob")
    script = job_dir / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={job_dir}/%x.%j.log\necho recorded\n")
    submitted = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", "-J", "rec", str(script)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    jobid = submitted.stdout.strip()
    store = MemoryOutputPaths()
    live = job_output(store, Slurm())

    async def recorded_and_ended() -> bool:
        await live.record_submitted(alice, jobid)
        return (await live.read(alice, jobid, "stdout", 0, 1000)).eof

    wait_for(lambda: asyncio.run(recorded_and_ended()), timeout=60, what="the job to end")
    # a gateway whose controller no longer answers for the job (here: no squeue at all)
    forgotten = job_output(store, Slurm({"squeue": "false"}))

    async def read() -> None:
        chunk = await forgotten.read(alice, jobid, "stdout", 0, 1000)
        assert (chunk.path, chunk.data, chunk.eof) == (
            f"{job_dir}/rec.{jobid}.log",
            "recorded\n",
            True,
        )
        with pytest.raises(Forbidden):
            await forgotten.read(bob, jobid, "stdout", 0, 1000)
        with pytest.raises(NotFound, match="unknown"):
            await job_output(MemoryOutputPaths(), Slurm()).read(alice, "999999999", "stdout", 0, 10)

    asyncio.run(read())


class WithoutOutput(Slurm):
    """A scheduler that does not say where jobs write (the interface's default)."""

    def output_paths_argv(self, jobid: str, *others: str) -> list[str] | None:
        return Scheduler.output_paths_argv(self, jobid, *others)


def test_a_scheduler_without_output_paths_has_no_job_output(cluster: None) -> None:
    alice = UnixAccount.lookup("alice")

    async def main() -> None:
        with pytest.raises(NotFound, match="not available"):
            await job_output(MemoryOutputPaths(), WithoutOutput()).read(alice, "1", "stdout", 0, 1)

    asyncio.run(main())


class CountingRunner(LocalRunner):
    """The local runner, counting the calls of each program."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    async def run(self, account: UnixAccount, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.calls.append(list(argv))
        return await super().run(account, argv, **kwargs)


def test_submits_close_together_share_one_lookup_of_their_output_paths(job_dir: Path) -> None:
    """What each submit used to cost: an squeue of its own, as the user."""
    alice = UnixAccount.lookup("alice")
    jobids = [
        subprocess.run(
            ["runuser", "-u", "alice", "--", "sbatch", "--parsable", "--hold",
             f"--output={job_dir}/%j-{n}.log", "--wrap=true"],
            capture_output=True, text=True, check=True, cwd=job_dir,
        ).stdout.strip()
        for n in range(3)
    ]  # fmt: skip
    runner = CountingRunner()
    machine = Machine("ln3", runner, Slurm(), command_limits=LIMITS, scheduler_limits=LIMITS)
    store = MemoryOutputPaths()
    output = JobOutput(machine, FileService("ln3", runner, FileLimits(LIMITS, LIMITS, 1, 1)), store)

    async def submit_all() -> None:
        for jobid in jobids:
            output.submitted(alice, jobid)
        await asyncio.sleep(BATCH_SECONDS + 3)

    try:
        asyncio.run(submit_all())
    finally:
        subprocess.run(["scancel", *jobids], check=False)
    assert [argv[0] for argv in runner.calls] == ["squeue"]
    for n, jobid in enumerate(jobids):
        record = asyncio.run(store.get("ln3", jobid))
        assert record is not None and record.stdout == f"{job_dir}/{jobid}-{n}.log"


def test_a_shutdown_waits_for_the_output_paths_of_the_last_submits(job_dir: Path) -> None:
    alice = UnixAccount.lookup("alice")
    jobid = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", "--hold",
         f"--output={job_dir}/last.log", "--wrap=true"],
        capture_output=True, text=True, check=True, cwd=job_dir,
    ).stdout.strip()  # fmt: skip
    store = MemoryOutputPaths()
    output = job_output(store, Slurm())

    async def submit_then_shut_down() -> None:
        output.submitted(alice, jobid)
        await output.flush()  # what Gateway.close() does, before the batch's time is up

    try:
        asyncio.run(submit_then_shut_down())
    finally:
        subprocess.run(["scancel", jobid], check=False)
    record = asyncio.run(store.get("ln3", jobid))
    assert record is not None and record.stdout == f"{job_dir}/last.log"
