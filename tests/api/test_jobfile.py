"""Issue 12: a job file must be a regular file, checked as the user, before sbatch sees it.

sbatch reads the whole file into memory: ``/dev/zero`` made it grow to 2 GB in 3 s, and a
FIFO nobody writes to would hang it until the scheduler timeout. Each is refused with 400
at once, by both transports.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.conftest import Server, error_of, ok_output


def submit_error(client: httpx.Client, jobfile: str) -> str:
    return error_of(client.post("/job/ln3/", data={"jobfile": jobfile}), 400)


@pytest.fixture
def fifo(alice: httpx.Client) -> str:
    """A FIFO in alice's home, made by alice (nobody ever writes to it)."""
    path = f"/home/alice/fifo-{uuid.uuid4().hex[:8]}"
    made = ok_output(alice.post("/command/ln3", data={"command": f"mkfifo {path}"}))
    assert made["retcode"] == 0, made
    return path


@pytest.mark.parametrize(
    "jobfile", ["/dev/zero", "/dev/urandom", "/home/alice", "/home/alice/no-such-job.sh"]
)
def test_a_jobfile_that_is_not_a_regular_file_is_400_at_once(
    server: Server, alice: httpx.Client, jobfile: str
) -> None:
    started = time.monotonic()
    message = submit_error(alice, jobfile)
    assert f"the job file {jobfile} " in message and "not a regular file" in message
    # no scheduler call was made: sbatch would have read /dev/zero until its timeout
    config = server.config()
    scheduler_timeout = config.machines["ln3"].effective_limits(config.limits).scheduler_timeout
    assert time.monotonic() - started < scheduler_timeout


def test_a_fifo_in_the_users_home_is_400_and_nothing_hangs(alice: httpx.Client, fifo: str) -> None:
    try:
        message = submit_error(alice, fifo)
        assert f"the job file {fifo} " in message and "not a regular file" in message
    finally:
        alice.post("/command/ln3", data={"command": f"rm -f {fifo}"})


def test_another_users_file_is_checked_as_the_user(alice: httpx.Client) -> None:
    """/root is not alice's to read: refused as she sees it, not as the gateway (root)."""
    assert "cannot be reached by alice" in submit_error(alice, "/root/.bashrc")
