"""Issue 12: after a slurmdbd outage, an ended job is never a wrong 404.

slurmdbd is stopped; a short job of alice's runs to its end (slurmctld keeps its records
for slurmdbd: sdiag's "DBD Agent queue size"); the controller forgets it after MinJobAge;
slurmdbd is started again. From then on, until accounting has caught up, the job's detail
must be 503 ("try again") or 200 with the job, never 404 "there is no job".

Disruptive (it stops slurmdbd for about MinJobAge, 300 s here): it runs last in the suite.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, wait_for

pytestmark = [pytest.mark.disruptive, pytest.mark.slow]


def cluster_script(command: str) -> None:
    subprocess.run([str(REPO / "scripts" / "cluster"), command], check=True)


def as_alice(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "alice", "--", *argv], capture_output=True, text=True, cwd="/tmp"
    )


def min_job_age() -> int:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    found = re.search(r"^MinJobAge\s*=\s*(\d+)", config.stdout, re.M)
    return int(found.group(1)) if found else 300


def dbd_agent_queue() -> int:
    found = re.search(r"DBD Agent queue size:\s*(\d+)", as_alice("sdiag").stdout)
    assert found, "sdiag printed no DBD agent queue size"
    return int(found.group(1))


def controller_knows(jobid: str) -> bool:
    """Whether slurmctld still lists the job; True while squeue fails (it cannot tell)."""
    listed = as_alice("squeue", "--noheader", "--states=all", "--format=%i", f"--jobs={jobid}")
    forgotten = listed.returncode != 0 and "Invalid job id" in listed.stderr
    if listed.returncode != 0 and not forgotten:
        return True
    return jobid in listed.stdout.split()


@pytest.fixture
def slurmdbd_stopped(cluster: None) -> Iterator[None]:
    cluster_script("stop-dbd")
    try:
        yield
    finally:
        cluster_script("start-dbd")


@pytest.mark.parametrize("server", ["local"], indirect=True)  # minutes per transport
def test_an_ended_job_is_503_or_found_never_404_while_accounting_catches_up(
    alice: httpx.Client, slurmdbd_stopped: None
) -> None:
    jobid = as_alice("sbatch", "--parsable", "--wait", "--wrap=true").stdout.strip()
    assert jobid.isdigit(), "sbatch works without slurmdbd"
    assert dbd_agent_queue() > 0, "the controller holds the job's records for slurmdbd"

    # Wait until the controller forgets the job (MinJobAge after its end, plus its purge
    # cycle). Should this Slurm keep a job until accounting has it, carry on after the
    # deadline: the assertions below hold either way.
    deadline = time.monotonic() + min_job_age() + 120
    wait_for(
        lambda: not controller_knows(jobid) or time.monotonic() > deadline,
        timeout=min_job_age() + 180,
        interval=2,
        what=f"the controller to forget job {jobid}",
    )
    forgotten = not controller_knows(jobid)
    if forgotten:  # neither can answer: the error, never "no job"
        answer = alice.get(f"/job/ln3/{jobid}")
        assert answer.status_code == 503, answer.text

    cluster_script("start-dbd")
    answers: list[int] = []

    def found() -> bool:
        answer = alice.get(f"/job/ln3/{jobid}")
        answers.append(answer.status_code)
        assert answer.status_code in (200, 503), (answer.status_code, answer.text)
        return answer.status_code == 200 and answer.json()["output"]["status"][jobid] == (
            "Completed"
        )

    wait_for(found, timeout=180, interval=0.2, what=f"job {jobid} to be found again")
    assert 404 not in answers
