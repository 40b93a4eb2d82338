"""GET /healthz and /readyz on real gateways: a store that goes away, a stale snapshot, a
login node that does not answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcgate.stores.redis import RedisStore
from hpcgate.stores.snapshot import Snapshot
from tests.conftest import Server, free_port, start_server, stop_server, wait_for
from tests.login_nodes import LoginNodes
from tests.redis_server import PrivateRedis


def readiness(server: Server) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{server.url}/readyz", timeout=30)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def test_liveness_needs_no_login(local_server: Server) -> None:
    answer = httpx.get(f"{local_server.url}/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    assert httpx.head(f"{local_server.url}/healthz").status_code == 200


def test_a_gateway_with_fresh_snapshots_is_ready(local_server: Server) -> None:
    def ready() -> dict[str, Any] | None:
        status, body = readiness(local_server)
        return body if status == 200 else None

    body = wait_for(ready, timeout=30, what="the embedded monitor's first snapshots")
    assert body["ready"] is True
    assert set(body["checks"]) == {"store"} | {
        f"snapshot:{name}" for name in ("ln3", "tight", "renamed", "slow")
    }
    assert all(check["ok"] for check in body["checks"].values())


def test_both_are_in_the_openapi_description(local_server: Server) -> None:
    paths = httpx.get(f"{local_server.url}/api/openapi.json").json()["paths"]
    assert "/healthz" in paths and "/readyz" in paths and "/metrics" in paths
    assert "503" in paths["/readyz"]["get"]["responses"]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


def put_snapshot(url: str, machine: str, taken: float) -> None:
    async def put() -> None:
        store = RedisStore(url, prefix="hpcgate:")
        snapshot = Snapshot(machine, taken, True, 0.01, (True,), data_taken=taken)
        await store.put(snapshot, ttl=600)
        await store.close()

    asyncio.run(put())


def test_not_ready_with_a_stale_snapshot_or_without_the_store(
    cluster: None, tmp_path: Path, private_redis: PrivateRedis
) -> None:
    config = f"""
[store]
backend = "redis"
redis_url = "{private_redis.url}"
timeout = 1.0
[status]
stale_after = 30
[machines.alpha]
[machines.beta]
"""
    server = start_server(config, tmp_path)  # no monitor runs: snapshots come from the test
    try:
        status, body = readiness(server)
        assert status == 503 and body["ready"] is False
        assert body["checks"]["store"] == {"ok": True, "reason": ""}
        assert "no snapshot yet" in body["checks"]["snapshot:alpha"]["reason"]

        put_snapshot(private_redis.url, "alpha", time.time())
        put_snapshot(private_redis.url, "beta", time.time() - 120)

        def only_beta_stale() -> dict[str, Any] | None:
            status, body = readiness(server)
            return body if status == 503 and body["checks"]["snapshot:alpha"]["ok"] else None

        body = wait_for(only_beta_stale, timeout=10, what="alpha's snapshot to be seen")
        beta = body["checks"]["snapshot:beta"]
        assert beta["ok"] is False and "status.stale_after = 30" in beta["reason"], beta

        put_snapshot(private_redis.url, "beta", time.time())
        wait_for(lambda: readiness(server)[0] == 200, timeout=10, what="ready")

        private_redis.stop()

        def store_down() -> dict[str, Any] | None:
            status, body = readiness(server)
            return body if status == 503 and not body["checks"]["store"]["ok"] else None

        body = wait_for(store_down, timeout=15, what="the store to be reported down")
        assert "cannot be reached" in body["checks"]["store"]["reason"]
        assert body["checks"]["snapshot:alpha"] == {
            "ok": False,
            "reason": "the store cannot be read",
        }
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive all the same
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "hpcgate_store_up 0.0" in metrics
    finally:
        stop_server(server)


def test_an_ssh_machine_needs_a_login_node_that_answers(
    cluster: None, tmp_path: Path, login_nodes: LoginNodes
) -> None:
    closed = free_port()  # nothing listens there
    ssh = (
        f'known_hosts = "{login_nodes.known_hosts}"\nca_key = "{login_nodes.ca_key}"\n'
        "connect_timeout = 2\n"
    )
    config = f"""
[monitor]
account = "hpcmon"
[health]
connect_timeout = 1.0
[machines.up]
runner = "ssh"
[machines.up.ssh]
hosts = ["127.0.0.1:{closed}", "127.0.0.1:{login_nodes.ports[0]}"]
{ssh}
[machines.down]
runner = "ssh"
[machines.down.ssh]
hosts = ["127.0.0.1:{closed}"]
{ssh}
"""
    server = start_server(config, tmp_path)
    try:

        def checked() -> dict[str, Any] | None:
            checks = readiness(server)[1]["checks"]
            return checks if checks.get("snapshot:up", {}).get("ok") else None

        checks = wait_for(checked, timeout=60, what="a snapshot of the ssh machine")
        assert checks["login_nodes:up"] == {"ok": True, "reason": ""}
        down = checks["login_nodes:down"]
        assert down["ok"] is False
        assert f"127.0.0.1:{closed}" in down["reason"] and "refused" in down["reason"].lower()
        assert readiness(server)[0] == 503
    finally:
        stop_server(server)
