"""A dead slurmctld: scheduler routes answer 503 promptly, the rest keep working."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, error_of, ok_output

pytestmark = pytest.mark.disruptive
SCHEDULER_TIMEOUT = 30  # the test gateway's limits.scheduler_timeout


@pytest.fixture
def controller_stopped(cluster: None) -> Iterator[None]:
    subprocess.run([str(REPO / "scripts" / "cluster"), "stop-ctld"], check=True)
    try:
        yield
    finally:
        subprocess.run([str(REPO / "scripts" / "cluster"), "start-ctld"], check=True)


def test_scheduler_down_is_503_within_the_timeout(
    alice: httpx.Client, controller_stopped: None
) -> None:
    started = time.monotonic()
    assert "cannot be reached" in error_of(alice.get("/job/ln3"), 503)
    assert "cannot be reached" in error_of(
        alice.post("/job/ln3", data={"jobscript": "#!/bin/bash\ntrue\n"}), 503
    )
    assert time.monotonic() - started < 2 * SCHEDULER_TIMEOUT
    # the gateway itself and the command route keep answering
    assert ok_output(alice.get("/auth"))["username"] == "alice"
    assert ok_output(alice.post("/command/ln3", data={"command": "echo up"}))["output"] == "up\n"


def test_the_gateway_recovers_when_the_scheduler_returns(alice: httpx.Client) -> None:
    # runs after the test above restarted slurmctld: no gateway restart is needed
    assert "status" in ok_output(alice.get("/job/ln3"))
