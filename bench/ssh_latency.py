"""Latency of POST /api/command and POST /api/job: local, pooled SSH, fresh SSH per request.

    .venv/bin/python -m bench.ssh_latency [--requests 200]

Needs root and the cluster of scripts/cluster. Starts two real sshd's on loopback as
login nodes (trusting a throwaway CA) and one gateway with three machines on the same
cluster: ``local`` (the local runner), ``pooled`` (SSH, pooled connections) and
``fresh`` (SSH with ``idle_timeout = 0``: a new connection, key exchange and certificate
login per request, as NEWT-era gateways worked). Requests are sequential and interleaved
(one to each machine per round) so that noise falls on all three alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tests.conftest import free_port
from tests.login_nodes import LoginNodes

from bench.common import Gateway, Samples, ensure_cluster

MACHINES = ("local", "pooled", "fresh")


def config(nodes: LoginNodes) -> str:
    hosts = ", ".join(f'"127.0.0.1:{port}"' for port in nodes.ports)
    ssh = f'hosts = [{hosts}], known_hosts = "{nodes.known_hosts}", ca_key = "{nodes.ca_key}"'
    return f"""
[auth]
backend = "pam"

[monitor]
account = "hpcmon"

[machines.local]

[machines.pooled]
runner = "ssh"
ssh = {{ {ssh} }}

[machines.fresh]
runner = "ssh"
ssh = {{ {ssh}, idle_timeout = 0 }}
"""


def measure(client: httpx.Client, requests: int) -> dict[tuple[str, str], Samples]:
    samples = {(route, m): Samples() for route in ("command", "job") for m in MACHINES}
    for _ in range(requests):
        for machine in MACHINES:
            for route, send in (
                (
                    "command",
                    lambda m=machine: client.post(f"/api/command/{m}", data={"command": "true"}),
                ),
                (
                    "job",
                    lambda m=machine: client.post(
                        f"/api/job/{m}",
                        data={"jobscript": "#!/bin/bash\ntrue\n", "jobfilepath": "~/bench/job.sh"},
                    ),
                ),
            ):
                start = time.perf_counter()
                answer = send()
                took = time.perf_counter() - start
                entry = samples[(route, machine)]
                entry.latencies.append(took)
                entry.errors += answer.status_code != 200
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per route and machine")
    args = parser.parse_args()
    ensure_cluster()
    directory = Path(tempfile.mkdtemp(prefix="hpcgate-bench-ssh-"))
    directory.chmod(0o755)
    nodes = LoginNodes(directory, [free_port(), free_port()])
    nodes.start_all()
    try:
        with Gateway(config(nodes)) as gateway:
            token = gateway.token("alice")
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as client:
                measure(client, 3)  # warm up: pools, caches, first certificate
                samples = measure(client, args.requests)
    finally:
        nodes.stop_all()
        subprocess.run(["scancel", "--user=alice"], check=False)

    print(
        f"# ssh_latency, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.requests} sequential "
        "requests per cell\n"
    )
    print("| route              | runner       | p50 (ms) | p99 (ms) | errors | p50 vs local |")
    print("|--------------------|--------------|---------:|---------:|-------:|-------------:|")
    for route, label in (("command", "POST /api/command"), ("job", "POST /api/job")):
        local = statistics.median(samples[(route, "local")].latencies)
        for machine, name in (
            ("local", "local"),
            ("pooled", "SSH, pooled"),
            ("fresh", "SSH, fresh"),
        ):
            entry = samples[(route, machine)]
            print(
                f"| {label:18} | {name:12} | {entry.median * 1000:8.1f} | "
                f"{entry.percentile(99) * 1000:8.1f} | {entry.errors:6} | "
                f"{entry.median / local:11.2f}x |"
            )
    for route in ("command", "job"):
        pooled = samples[(route, "pooled")].median
        fresh = samples[(route, "fresh")].median
        print(
            f"\n{route}: a fresh connection per request is {fresh / pooled:.1f}x the pooled median"
        )


if __name__ == "__main__":
    main()
