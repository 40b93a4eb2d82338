"""Debian's Prometheus scrapes a real gateway with the shipped deploy/prometheus config, and
its own HTTP API answers with the cluster and request series; promtool accepts the
exposition."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, Server, free_port, start_server, stop_server, wait_for
from tests.deploy.conftest import need

SHIPPED = REPO / "deploy" / "prometheus" / "prometheus.yml"


@pytest.fixture(scope="module")
def monitored(cluster: None, public_dir: Path) -> Iterator[Server]:
    """A gateway whose monitor probes ln3 every second."""
    gateway = start_server(
        '[monitor]\naccount = "hpcmon"\ninterval = 1\n[machines.ln3]\n', public_dir
    )
    yield gateway
    stop_server(gateway)


def _exposition(gateway: Server) -> str:
    def with_cluster_series() -> str | None:
        text = httpx.get(f"{gateway.url}/metrics").text
        return text if "slurm_nodes{" in text else None

    return wait_for(with_cluster_series, what="a snapshot in /metrics")


def test_promtool_accepts_the_exposition(monitored: Server) -> None:
    need("promtool")
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=_exposition(monitored),
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == "", "promtool's lint found problems"


@pytest.fixture
def prometheus(monitored: Server, tmp_path: Path) -> Iterator[str]:
    """Prometheus with the shipped config, this gateway as its target, scraping each second."""
    need("prometheus", "promtool")
    shipped = SHIPPED.read_text()
    assert 'targets: ["127.0.0.1:8080"]' in shipped and "scrape_interval: 15s" in shipped
    target = monitored.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        shipped.replace("127.0.0.1:8080", target).replace(
            "scrape_interval: 15s", "scrape_interval: 1s"
        )
    )
    checked = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail((tmp_path / "prometheus.log").read_text())
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=60, what="Prometheus to be ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_prometheus_scrapes_the_cluster_and_request_series(
    monitored: Server, prometheus: str
) -> None:
    httpx.get(f"{monitored.url}/api/job")  # a request to count
    up = wait_for(lambda: _query(prometheus, 'up{job="hpcgate"} == 1'), what="a scrape")
    assert up[0]["metric"]["instance"] == monitored.url.removeprefix("http://")

    nodes = wait_for(lambda: _query(prometheus, 'sum by (machine) (slurm_nodes{machine="ln3"})'))
    assert float(nodes[0]["value"][1]) >= 4  # node[1-4], some in two partitions

    requests = wait_for(
        lambda: _query(prometheus, 'hpcgate_http_requests_total{route="/api/job",method="GET"}'),
        what="the request series",
    )
    assert float(requests[0]["value"][1]) >= 1
    assert wait_for(lambda: _query(prometheus, 'hpcgate_probe_success{machine="ln3"} == 1'))
