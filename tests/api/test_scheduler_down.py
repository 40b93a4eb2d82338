"""A dead slurmctld: scheduler routes answer 503 promptly, the rest keep working."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import REPO, Server, error_of, ok_output, wait_for

pytestmark = pytest.mark.disruptive


@contextmanager
def slurmctld_stopped() -> Iterator[None]:
    """slurmctld stopped for the block; started again, its nodes idle, when it ends."""
    subprocess.run([str(REPO / "scripts" / "cluster"), "stop-ctld"], check=True)
    try:
        yield
    finally:
        subprocess.run([str(REPO / "scripts" / "cluster"), "start-ctld"], check=True)


@pytest.fixture
def controller_stopped(cluster: None) -> Iterator[None]:
    with slurmctld_stopped():
        yield


def monitor_error(anonymous: httpx.Client) -> str:
    """What the status view says went wrong with ln3's last probe ('' if nothing)."""
    return str(ok_output(anonymous.get("/job"))["ln3"].get("error", ""))


@pytest.fixture
def ended_job(cluster: None) -> str:
    """One of alice's jobs that has ended and is in accounting."""
    jobid = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", "--wait", "--wrap=true"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    ).stdout.strip()

    def recorded() -> bool:
        # settled: not accounting's placeholder, which has no partition yet
        sacct = ["sacct", "--noheader", "--parsable2", "--format=state,partition", f"-j{jobid}"]
        rows = subprocess.run(sacct, capture_output=True, text=True).stdout.splitlines()
        return bool(rows) and rows[0] == "COMPLETED|work"

    wait_for(recorded, what=f"job {jobid} settled in accounting")
    return jobid


def test_scheduler_down_is_503_within_the_timeout(
    server: Server,
    alice: httpx.Client,
    anonymous: httpx.Client,
    ended_job: str,
    controller_stopped: None,
) -> None:
    config = server.config()
    scheduler_timeout = config.machines["ln3"].effective_limits(config.limits).scheduler_timeout
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:  # three requests that each wait on the dead scheduler
        submitting = pool.submit(alice.post, "/job/ln3", data={"jobscript": "#!/bin/bash\ntrue\n"})
        listing = pool.submit(alice.get, "/job/ln3").result()
        unknown = pool.submit(alice.get, "/job/ln3/987654321").result()
        submitted = submitting.result()
    assert time.monotonic() - started < 3 * scheduler_timeout
    assert "cannot be reached" in error_of(submitted, 503)
    # nothing was submitted (the controller could not be reached), so alice's listing may
    # still come from the monitors' last snapshot; live, it meets the dead scheduler
    if listing.status_code == 200:
        assert "Age" in listing.headers, "a listing served while the scheduler is down is cached"
    else:
        assert "cannot be reached" in error_of(listing, 503)
    # a job accounting does not show ended needs the controller
    assert "cannot be reached" in error_of(unknown, 503)
    # one it shows ended is answered by accounting alone
    assert ok_output(alice.get(f"/job/ln3/{ended_job}"))["status"][ended_job] == "Completed"
    # the gateway itself, the command route and the status view keep answering
    assert ok_output(alice.get("/auth"))["username"] == "alice"
    assert ok_output(alice.post("/command/ln3", data={"command": "echo up"}))["output"] == "up\n"

    def probe_failed() -> dict[str, object] | None:
        ln3: dict[str, object] = ok_output(anonymous.get("/job"))["ln3"]
        return ln3 if "cannot be reached" in str(ln3.get("error", "")) else None

    ln3 = wait_for(probe_failed, timeout=60, what="the monitor to report the dead scheduler")
    assert ln3["queue"]["health"] < 1  # type: ignore[index]


def test_the_gateway_recovers_when_the_scheduler_returns(
    cluster: None, alice: httpx.Client, anonymous: httpx.Client
) -> None:
    with slurmctld_stopped():
        submitted = alice.post("/job/ln3", data={"jobscript": "#!/bin/bash\ntrue\n"})
        assert "cannot be reached" in error_of(submitted, 503)
        wait_for(
            lambda: "cannot be reached" in monitor_error(anonymous),
            timeout=60,
            what="the monitor to report the dead scheduler",
        )
    # slurmctld is back and the same gateway process uses it again, without a restart
    jobid = ok_output(alice.post("/job/ln3", data={"jobscript": "#!/bin/bash\nsleep 60\n"}))[
        "jobid"
    ]
    assert jobid in ok_output(alice.get("/job/ln3"))["id"], "a live listing after the submit"
    ok_output(alice.delete(f"/job/ln3/{jobid}"))
    wait_for(
        lambda: monitor_error(anonymous) == "",
        timeout=60,
        what="the monitor to report the scheduler healthy again",
    )


@pytest.fixture
def accounting_stopped(cluster: None) -> Iterator[None]:
    subprocess.run([str(REPO / "scripts" / "cluster"), "stop-dbd"], check=True)
    try:
        yield
    finally:
        subprocess.run([str(REPO / "scripts" / "cluster"), "start-dbd"], check=True)


def test_accounting_down_falls_back_to_the_live_view_or_says_so(
    alice: httpx.Client, accounting_stopped: None
) -> None:
    jobid = ok_output(alice.post("/job/ln3", data={"jobscript": "#!/bin/bash\nsleep 60\n"}))[
        "jobid"
    ]
    rows = ok_output(alice.get(f"/job/ln3/{jobid}"))
    assert rows["status"][jobid] in ("Pending", "Running"), "the controller knows it"
    # a job the controller does not know: only accounting could tell, and it is down, so
    # the answer is "cannot tell" (503), never a possibly wrong "no such job" (404)
    assert "cannot be reached" in error_of(alice.get("/job/ln3/987654321"), 503)
    ok_output(alice.delete(f"/job/ln3/{jobid}"))
