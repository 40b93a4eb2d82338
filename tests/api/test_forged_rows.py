"""Issue 12: a job name is the user's to write; it must never act as rows of the listing.

alice names her jobs with text that prints as rows of bob's (with the unit and record
separators, newlines, ``|``), through ``#SBATCH --job-name``, ``jobconf`` and ``scontrol
update`` run as herself. bob's listing, live and from the monitor's snapshot, must show
his held job exactly as it is; bob must not read alice's jobs; alice must read hers,
with their names exactly as Slurm stores them.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import error_of, ok_output, wait_for

HELD = "#!/bin/bash\n#SBATCH --hold\nsleep 300\n"  # stays in the queue, waiting
FORGED_ID = "99999999"


def as_user(user: str, *argv: str) -> None:
    subprocess.run(["runuser", "-u", user, "--", *argv], check=True, capture_output=True)


def submit(client: httpx.Client, **fields: Any) -> str:
    jobid: str = ok_output(client.post("/job/ln3/", data=fields))["jobid"]
    return jobid


def forged(bob_job: str, sep: str, end: str) -> str:
    """Text that prints as two rows of bob's, in the old and in the current column order:
    his job cancelled on nodeX, and a job of his that does not exist."""
    rows = [
        [bob_job, "FORGED", "bob", "CANCELLED", "work", "0:01", "1", "1", "nodeX", "0"],
        [bob_job, "1002", "bob", "CANCELLED", "work", "0:01", "1", "1", "nodeX", "0", "FORGED"],
        [FORGED_ID, "1002", "bob", "RUNNING", "work", "0:01", "1", "1", "nodeX", "0", "FORGED"],
    ]
    return "x" + "".join(end + sep.join(row) + sep for row in rows) + end + "tail"


def still_held(jobids: Iterable[str]) -> set[str]:
    """Those of ``jobids`` Slurm still has waiting, as root reads it (ids only, no names):
    other test sessions on this cluster may cancel every job of alice's at any time."""
    squeue = [
        "squeue",
        "--noheader",
        "--states=PENDING",
        "--format=%i",
        f"--jobs={','.join(jobids)}",
    ]
    return set(subprocess.run(squeue, capture_output=True, text=True).stdout.split())


def timed_queue(client: httpx.Client) -> tuple[dict[str, dict[str, Any]], float, bool]:
    """The listing, when its data was read, and whether it came from a snapshot."""
    asked = time.time()
    answer = client.get("/job/ln3/")
    taken = datetime.fromisoformat(answer.headers["X-Data-Taken"]).timestamp()
    return ok_output(answer), taken, taken < asked


def assert_bobs_listing_is_his(listing: dict[str, dict[str, Any]], bob_job: str) -> None:
    assert listing["status"][bob_job] == "Pending"
    assert listing["name"][bob_job] == "bob's held job"
    assert listing["nodelist"][bob_job] == "(JobHeldUser)"
    assert listing["user"][bob_job] == "bob"
    assert FORGED_ID not in listing["id"]
    assert set(listing["user"].values()) == {"bob"}
    assert not any("FORGED" in name for name in listing["name"].values())


@pytest.fixture
def bob_job(bob: httpx.Client) -> Iterator[str]:
    jobid = submit(bob, jobscript=HELD, jobconf=json.dumps({"job_name": "bob's held job"}))
    yield jobid
    as_user("bob", "scancel", jobid)


@pytest.fixture
def alice_jobs(alice: httpx.Client, bob_job: str) -> Iterator[dict[str, str]]:
    """alice's jobs, by id, with the names Slurm stores for them."""
    names: dict[str, str] = {}
    for sep, end in [("\x1f", "\x1e"), ("\x1e", "\x1f"), ("\x1f", "\x1f"), ("\t", "\x1e")]:
        name = forged(bob_job, sep, end)  # one #SBATCH line: no newline in it
        script = f'#!/bin/bash\n#SBATCH --hold\n#SBATCH --job-name="{name}"\nsleep 300\n'
        names[submit(alice, jobscript=script)] = name
    by_jobconf = forged(bob_job, "|", " ")  # the gateway refuses control characters here
    jobid = submit(alice, jobscript=HELD, jobconf=json.dumps({"job_name": by_jobconf}))
    names[jobid] = by_jobconf
    for sep, end in [("\x1f", "\n"), ("|", "\n"), ("\x1f", "\r\n")]:
        jobid = submit(alice, jobscript=HELD)
        name = forged(bob_job, sep, end)
        as_user("alice", "scontrol", "update", f"JobId={jobid}", f"JobName={name}")
        names[jobid] = name
    long_name = ("\n" + "\x1f".join([bob_job, "1002", "bob", "FAILED"])) * 60
    jobid = submit(alice, jobscript=HELD)
    as_user("alice", "scontrol", "update", f"JobId={jobid}", f"JobName={long_name[:1024]}")
    names[jobid] = long_name[:1024]
    yield names
    as_user("alice", "scancel", *names)


def test_forged_names_neither_hide_nor_alter_bobs_live_listing(
    bob: httpx.Client, bob_job: str, alice_jobs: dict[str, str]
) -> None:
    ok_output(bob.post("/job/ln3/", data={"jobscript": "#!/bin/bash\ntrue\n"}))  # a write:
    listing, _, from_snapshot = timed_queue(bob)  # his next listing is read live
    assert not from_snapshot
    assert_bobs_listing_is_his(listing, bob_job)


def test_forged_names_neither_hide_nor_alter_bobs_snapshot_listing(
    bob: httpx.Client, bob_job: str, alice_jobs: dict[str, str]
) -> None:
    named = time.time()

    def from_a_newer_snapshot() -> dict[str, dict[str, Any]] | None:
        listing, taken, from_snapshot = timed_queue(bob)
        return listing if from_snapshot and taken > named else None

    listing = wait_for(from_a_newer_snapshot, what="a snapshot taken after the renames")
    assert_bobs_listing_is_his(listing, bob_job)


def test_bob_cannot_read_or_kill_alices_forged_jobs(
    bob: httpx.Client, alice_jobs: dict[str, str]
) -> None:
    for jobid in alice_jobs:
        assert "another user" in error_of(bob.get(f"/job/ln3/{jobid}"), 403)
        assert "another user" in error_of(bob.delete(f"/job/ln3/{jobid}"), 403)


def test_alice_reads_her_jobs_with_their_exact_names(
    alice: httpx.Client, alice_jobs: dict[str, str]
) -> None:
    for jobid, name in alice_jobs.items():
        rows = ok_output(alice.get(f"/job/ln3/{jobid}"))
        assert rows["name"][jobid] == name and rows["id"][jobid] == jobid
    renamed = time.time()

    def read_after_the_renames() -> dict[str, dict[str, Any]] | None:
        listing, taken, _ = timed_queue(alice)
        return listing if taken > renamed else None

    held_before = still_held(alice_jobs)
    listing = wait_for(read_after_the_renames, what="alice's listing read after the renames")
    held = held_before & still_held(alice_jobs)  # held all along, so while it was read
    assert held, "every job of alice's was cancelled by another test session"
    # every one of her held jobs, each with its exact name: none dropped, none altered
    assert {jobid: listing["name"].get(jobid) for jobid in held} == {
        jobid: alice_jobs[jobid] for jobid in held
    }
    assert all(listing["status"][jobid] == "Pending" for jobid in held)
    assert FORGED_ID not in listing["id"]
    assert set(listing["user"].values()) == {"alice"}
