"""Two API processes and one monitor process sharing one Redis, as deployed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    REDIS_URL,
    Server,
    error_of,
    ok_output,
    start_server,
    stop_server,
    wait_for,
)
from tests.redis_server import PrivateRedis
from tests.slurm_helpers import cancel, held_job

STALE_AFTER = 3


def shared_config(redis_url: str, prefix: str) -> str:
    return f"""
[auth]
backend = "pam"
failed_login_delay = 0.05

[store]
backend = "redis"
redis_url = "{redis_url}"
prefix = "{prefix}"
timeout = 1

[status]
stale_after = {STALE_AFTER}
queue_max_age = 30

[monitor]
interval = 0.5

[machines.ln3]
"""


class Deployment:
    """Gateways and a monitor, each its own process, sharing one store."""

    def __init__(self, config_text: str, workdir: Path, gateways: int = 2) -> None:
        self.workdir = workdir
        self.config = workdir / "shared.toml"
        self.config.write_text(config_text)
        self.servers: list[Server] = [start_server(config_text, workdir) for _ in range(gateways)]
        self.monitor: subprocess.Popen[bytes] | None = None

    def start_monitor(self) -> None:
        log = (self.workdir / "monitor.log").open("ab")
        self.monitor = subprocess.Popen(
            [sys.executable, "-m", "hpcgate", "monitor", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.terminate()
            assert self.monitor.wait(timeout=10) == 0, "the monitor stops cleanly on SIGTERM"
            self.monitor = None

    def statuses(self) -> list[dict[str, object]]:
        return [ok_output(httpx.get(f"{s.url}/api/job", timeout=10))["ln3"] for s in self.servers]

    def close(self) -> None:
        self.stop_monitor()
        for server in self.servers:
            stop_server(server)


@pytest.fixture
def deployment(cluster: None, public_dir: Path, prefix: str) -> Iterator[Deployment]:
    workdir = public_dir / prefix.rstrip(":")
    workdir.mkdir()
    deployed = Deployment(shared_config(REDIS_URL, prefix), workdir)
    yield deployed
    deployed.close()


def test_gateways_agree_go_stale_with_the_monitor_and_recover(deployment: Deployment) -> None:
    never = deployment.statuses()
    assert all(s["stale"] is True and s["updated"] is None for s in never)
    assert "no monitor has reported" in str(never[0]["error"])

    deployment.start_monitor()
    fresh = wait_for(
        lambda: (lambda s: s if all(not x["stale"] for x in s) else None)(deployment.statuses()),
        what="both gateways to see a fresh snapshot",
    )
    assert fresh[0]["info"] == fresh[1]["info"]

    jobids = [held_job("alice", "shared") for _ in range(2)]
    try:

        def both_count_them() -> bool:
            counts = [s["queue"].get("PD", 0) for s in deployment.statuses()]  # type: ignore[attr-defined]
            return counts[0] == counts[1] and counts[0] >= 2

        wait_for(both_count_them, what="both gateways to count the held jobs")
        # and alice's listing, from the shared snapshot, on either gateway
        for server in deployment.servers:
            with closing(server.login("alice")) as alice:
                listing = ok_output(alice.get("/job/ln3"))
                assert set(jobids) <= set(listing["id"])
    finally:
        cancel(*jobids)

    deployment.stop_monitor()
    wait_for(
        lambda: all(s["stale"] is True for s in deployment.statuses()),
        timeout=STALE_AFTER + 10,
        what="both gateways to report stale",
    )
    deployment.start_monitor()
    wait_for(
        lambda: all(s["stale"] is False for s in deployment.statuses()),
        what="both gateways to recover",
    )


@pytest.fixture
def private_deployment(
    cluster: None, public_dir: Path, private_redis: PrivateRedis, prefix: str
) -> Iterator[tuple[Deployment, PrivateRedis]]:
    workdir = public_dir / f"private-{prefix.rstrip(':')}"
    workdir.mkdir()
    deployed = Deployment(shared_config(private_redis.url, prefix), workdir, gateways=1)
    deployed.start_monitor()
    yield deployed, private_redis
    deployed.close()


def test_redis_down_is_503_and_everything_recovers(
    private_deployment: tuple[Deployment, PrivateRedis],
) -> None:
    deployment, redis_server = private_deployment
    server = deployment.servers[0]
    wait_for(lambda: deployment.statuses()[0]["stale"] is False, what="a first snapshot")

    alice = server.login("alice")
    redis_server.stop()
    with server.client() as anonymous:
        assert "cannot be reached" in error_of(anonymous.get("/job"), 503)
    # sessions live in Redis too: a clear 503, never a hang or a wrong answer
    assert "cannot be reached" in error_of(alice.get("/job/ln3"), 503)

    redis_server.start()  # empty: the monitor must fill it again, nobody restarts anything
    assert deployment.monitor is not None and deployment.monitor.poll() is None
    wait_for(
        lambda: deployment.statuses()[0]["stale"] is False,
        timeout=20,
        what="the gateway and monitor to recover",
    )
    # the restarted Redis is empty: the old session is gone, a new login works
    error_of(alice.get("/job/ln3"), 401)
    with closing(server.login("alice")) as again:
        assert "id" in ok_output(again.get("/job/ln3"))
    alice.close()


def test_an_idempotency_key_holds_across_gateways(deployment: Deployment) -> None:
    key = "across-gateways-" + deployment.workdir.name
    body = {"jobscript": "#!/bin/bash\nsleep 60\n", "jobconf": '{"job_name": "across"}'}
    jobids = []
    for server in deployment.servers:
        with closing(server.login("alice")) as alice:
            answer = alice.post("/job/ln3", data=body, headers={"Idempotency-Key": key})
            jobids.append(ok_output(answer)["jobid"])
    assert jobids[0] == jobids[1], "the second gateway found the first one's record in Redis"
    cancel(*jobids[:1])


def test_a_login_works_on_every_gateway_and_a_logout_ends_it_everywhere(
    deployment: Deployment,
) -> None:
    first, second = deployment.servers
    with closing(first.login("alice")) as alice:
        token = alice.headers["Authorization"]
        with second.client(headers={"Authorization": token}) as elsewhere:
            assert ok_output(elsewhere.get("/auth"))["username"] == "alice"
            ok_output(elsewhere.delete("/auth"))
        error_of(alice.get("/job/ln3"), 401)
