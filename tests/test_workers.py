"""``hpcgate serve --workers N``: refused without Redis; with it, N processes on one port
whose logins are shared and whose metrics are summed whichever process is scraped."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import PASSWORDS, REDIS_URL, free_port, wait_for


def serve(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcgate", "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_several_workers_need_the_redis_store(tmp_path: Path) -> None:
    config = tmp_path / "memory.toml"
    config.write_text("[machines.ln3]\n")
    refused = serve(config, "--workers", "2", "--port", str(free_port()))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and 'backend = "redis"' in lines[0], refused.stderr


def test_several_workers_never_embed_the_monitors(tmp_path: Path) -> None:
    config = tmp_path / "embedded.toml"
    config.write_text('[store]\nbackend = "redis"\n[monitor]\nembedded = true\n[machines.ln3]\n')
    refused = serve(config, "--workers", "3", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "hpcgate monitor" in refused.stderr and "3 times" in refused.stderr, refused.stderr


@pytest.fixture
def two_workers(cluster: None, tmp_path: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    """``hpcgate serve --workers 2`` on Redis; its URL and its metrics directory."""
    pool = tmp_path / "metrics"
    config = tmp_path / "workers.toml"
    config.write_text(
        f'[auth]\nfailed_login_delay = 0.05\n[store]\nbackend = "redis"\n'
        f'redis_url = "{REDIS_URL}"\nprefix = "{prefix}"\n'
        f'[metrics]\nmultiprocess_dir = "{pool}"\n[machines.ln3]\n'
    )
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "hpcgate", "serve", "--config", str(config)),
            *("--port", str(port), "--workers", "2"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        if process.poll() is not None:
            pytest.fail((tmp_path / "serve.log").read_text())
        try:
            return httpx.get(f"{url}/api/auth", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answering, timeout=60, what="the workers to answer")
    yield url, pool
    process.terminate()
    process.wait(timeout=30)
    log.close()


def healthz_counts(pool: Path) -> dict[str, float]:
    """Each worker's count of GET /healthz, read from its own file in the pool."""
    counts = {}
    for path in pool.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        counts[path.stem] = sum(
            value
            for key, value, _, _ in values
            if '"hpcgate_http_requests_total"' in key and '"/healthz"' in key
        )
    return counts


def test_two_workers_share_logins_and_sum_their_metrics(two_workers: tuple[str, Path]) -> None:
    url, pool = two_workers
    answer = httpx.post(
        f"{url}/api/auth", data={"username": "alice", "password": PASSWORDS["alice"]}
    )
    token = answer.json()["output"]["token"]
    sent = 0

    def both_served() -> bool:
        nonlocal sent
        for _ in range(20):  # a new connection each time: either process may accept it
            whoami = httpx.get(f"{url}/api/auth", headers={"Authorization": f"Bearer {token}"})
            assert whoami.json()["output"]["username"] == "alice"  # the session is in Redis
            assert httpx.get(f"{url}/healthz").status_code == 200
            sent += 1
        served = healthz_counts(pool)
        return len([n for n in served.values() if n > 0]) >= 2

    wait_for(both_served, timeout=60, what="both workers to answer requests")
    assert sum(healthz_counts(pool).values()) == sent
    for _ in range(6):  # whichever worker answers the scrape counts every worker's requests
        scraped = httpx.get(f"{url}/metrics").text
        line = 'hpcgate_http_requests_total{method="GET",route="/healthz",status="200"}'
        assert f"{line} {float(sent)}" in scraped, scraped
