"""What the containment tests look for: processes of alice's that outlived their action."""

from __future__ import annotations

import gc
import os
import subprocess
import time

from tests.conftest import wait_for

ESCAPES = {
    "nohup": "nohup {sleep} &",
    "setsid": "setsid -f {sleep}",
    "job-control": "set -m; {sleep} &",
}


def unique_sleep() -> str:
    """A sleep command no other test (or parallel run) starts."""
    return f"sleep {1000 + time.time_ns() % 10**9 / 10**9:.9f}"


def alices(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-u", "alice", "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()


def open_descriptors() -> int:
    gc.collect()  # unreferenced transports of earlier event loops close their pipes now
    return len(os.listdir("/proc/self/fd"))


def assert_nothing_left(pattern: str, descriptors: int) -> None:
    try:
        assert wait_for(lambda: not alices(pattern), timeout=10, what=f"no {pattern!r} left")
    finally:
        subprocess.run(["pkill", "-KILL", "-u", "alice", "-f", pattern])
    # What a replaced helper or an earlier test's transports held is released as they are
    # collected, at a moment of their own: a descriptor the action kept would stay.
    assert wait_for(
        lambda: open_descriptors() == descriptors,
        timeout=10,
        what=f"the gateway to keep no descriptor of the action ({descriptors} before it)",
    )


def submit_and_detach(sleep: str) -> str:
    """A command line that submits a job and ends once the job's script runs (printing
    the job's id), after detaching ``sleep`` from under ``salloc`` on this host. The job
    and the sleep both carry the action's marker (sbatch and salloc hand the environment
    on) and a SLURM_JOB_ID: the job is the scheduler's, the sleep is the action's."""
    return (
        "started=$(mktemp -u /tmp/hpcgate-job-started.XXXXXX); "
        "id=$(sbatch --parsable --job-name=outlives-its-submit --time=2 -o /dev/null"
        ' --wrap "touch $started; exec sleep 300") || exit 1; '
        f"salloc --quiet --time=1 --job-name=detached setsid -f {sleep} || exit 1; "
        'until [ -e "$started" ]; do sleep 0.05; done; rm -f "$started"; echo "$id"'
    )


def assert_the_job_still_runs(jobid: str) -> None:
    """The job is the scheduler's, not the action's: ending the action must spare it."""
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            asked = subprocess.run(
                ["squeue", "-h", "-j", jobid, "-o", "%T"], capture_output=True, text=True
            )
            state = asked.stdout.strip()
            if asked.returncode == 0 or "Invalid job id" in asked.stderr:  # else: ask again
                assert state == "RUNNING", f"job {jobid} is {state or 'gone'}: the end hit it"
            time.sleep(0.1)
    finally:
        subprocess.run(["scancel", jobid], check=False)
