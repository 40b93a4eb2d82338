"""Issue 12, low items: job ids Slurm cannot have, array tasks and heterogeneous jobs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import error_of, ok_output, settled, wait_for

ARRAY = "#!/bin/bash\n#SBATCH --array=1-2\nsleep 300\n"
HETEROGENEOUS = "#!/bin/bash\n#SBATCH --ntasks=1\n#SBATCH hetjob\n#SBATCH --ntasks=1\nsleep 300\n"


@pytest.mark.parametrize("jobid", ["0", "00012", "4294967296", "999999999999", "1_x", "1+"])
def test_ids_slurm_cannot_have_are_bad_requests(alice: httpx.Client, jobid: str) -> None:
    error_of(alice.get(f"/job/ln3/{jobid}"), 400)
    error_of(alice.delete(f"/job/ln3/{jobid}"), 400)


def test_an_id_slurm_does_not_know_is_not_found(alice: httpx.Client) -> None:
    for jobid in ("987654321", "987654321_3", "987654321+1"):
        error_of(settled(lambda: alice.get(f"/job/ln3/{jobid}")), 404)  # noqa: B023
        error_of(settled(lambda: alice.delete(f"/job/ln3/{jobid}")), 404)  # noqa: B023


def submitted(client: httpx.Client, script: str) -> Iterator[str]:
    jobid: str = ok_output(client.post("/job/ln3/", data={"jobscript": script}))["jobid"]
    yield jobid
    subprocess.run(["scancel", jobid], check=False)


@pytest.fixture
def array(bob: httpx.Client) -> Iterator[str]:
    yield from submitted(bob, ARRAY)


@pytest.fixture
def heterogeneous(bob: httpx.Client) -> Iterator[str]:
    yield from submitted(bob, HETEROGENEOUS)


def listed(client: httpx.Client, *jobids: str) -> dict[str, dict[str, Any]] | None:
    listing: dict[str, dict[str, Any]] = ok_output(client.get("/job/ln3/"))
    return listing if set(jobids) <= set(listing["id"]) else None


def test_array_tasks_work_on_every_route_for_their_owner(
    alice: httpx.Client, bob: httpx.Client, array: str
) -> None:
    first, second = f"{array}_1", f"{array}_2"
    wait_for(lambda: listed(bob, first, second), what="both tasks listed by their ids")
    rows = ok_output(bob.get(f"/job/ln3/{second}"))
    assert rows["id"][second] == second
    assert "another user" in error_of(alice.get(f"/job/ln3/{second}"), 403)
    assert "another user" in error_of(alice.delete(f"/job/ln3/{second}"), 403)
    ok_output(bob.delete(f"/job/ln3/{second}"))  # was: 409 "already finished (Running)"

    def cancelled() -> bool:
        status: str = ok_output(bob.get(f"/job/ln3/{second}"))["status"][second]
        return status == "Cancelled"

    wait_for(cancelled, what=f"task {second} to be cancelled")
    assert ok_output(bob.get(f"/job/ln3/{first}"))["status"][first] in ("Pending", "Running")


def test_heterogeneous_components_work_on_every_route_for_their_owner(
    alice: httpx.Client, bob: httpx.Client, heterogeneous: str
) -> None:
    leader, other = f"{heterogeneous}+0", f"{heterogeneous}+1"
    wait_for(lambda: listed(bob, leader, other), what="both components listed by their ids")
    rows = ok_output(bob.get(f"/job/ln3/{other}"))
    assert rows["id"][other] == other
    assert "another user" in error_of(alice.get(f"/job/ln3/{other}"), 403)
    assert "another user" in error_of(alice.delete(f"/job/ln3/{leader}"), 403)
    ok_output(bob.delete(f"/job/ln3/{leader}"))  # cancels the whole heterogeneous job

    def cancelled() -> bool:
        status: str = ok_output(bob.get(f"/job/ln3/{other}"))["status"][other]
        return status == "Cancelled"

    wait_for(cancelled, what=f"component {other} to be cancelled with its leader")
