"""Job output at the service level, on the real cluster: the record kept at submit answers
once the controller no longer does."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcgate.accounts import UnixAccount
from hpcgate.errors import Forbidden, NotFound
from hpcgate.process import Limits
from hpcgate.runners.local import LocalRunner
from hpcgate.schedulers.base import Scheduler
from hpcgate.schedulers.slurm import Slurm
from hpcgate.services.files import FileLimits, FileService
from hpcgate.services.machine import Machine
from hpcgate.services.output import JobOutput
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

    def output_paths_argv(self, jobid: str) -> list[str] | None:
        return Scheduler.output_paths_argv(self, jobid)


def test_a_scheduler_without_output_paths_has_no_job_output(cluster: None) -> None:
    alice = UnixAccount.lookup("alice")

    async def main() -> None:
        with pytest.raises(NotFound, match="not available"):
            await job_output(MemoryOutputPaths(), WithoutOutput()).read(alice, "1", "stdout", 0, 1)

    asyncio.run(main())
