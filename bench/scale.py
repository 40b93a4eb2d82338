"""How hpcgate's cost grows with the jobs in the cluster and with the machines it serves.

    .venv/bin/python -m bench.scale [--jobs 100,1000,10000,100000] [--machines 1,2,4,8]
                                    [--seconds 4] [--write]

Needs root and the machine's Redis. Deployed as in production with Redis: one
``hpcgate serve`` (no embedded monitor) and one ``hpcgate monitor`` process sharing a
Redis store (a key prefix of its own, deleted at the end).

- **jobs**: for each N, the cluster holds N held jobs (a tenth alice's, at most
  ``OWN_JOBS``, so that her own listing stays the same size while the cluster grows;
  queued through slurmrestd) and the gateway serves one machine;
- **machines**: with 1,000 jobs held, the gateway serves M machines (all this cluster).

Each row: the monitor's probe time (squeue of every job and sinfo, per machine) and its
CPU use, the size of the snapshot and of the users' job lists kept apart from it,
slurmctld RPCs per minute with no requests coming in, `GET /api/job` and alice's
`GET /api/job/<m>` at 64 connections (req/s, p50), and the resident memory of the
gateway and of the monitor after the load. ``--write`` puts the
table, with date, machine and command, in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
from tests.conftest import REDIS_URL, wait_for

from bench import restd
from bench.common import (
    Gateway,
    RawConnection,
    Samples,
    describe_machine,
    host_port,
    slurmctld_rpcs,
    write_section,
)
from bench.vs_slurmrestd import cell

INTERVAL = 5.0  # the monitor's default probe interval
OWN_JOBS = 100  # alice's share of the held jobs, at most
MAX_HELD = 99_999  # scripts/cluster's MaxJobCount is 100,000, and slurmctld keeps one free


@dataclass
class Row:
    jobs: int
    machines: int
    probe_ms: float
    monitor_cpu: float
    snapshot_kib: float
    jobs_kib: float
    rpc_per_minute: float
    status: Samples
    queue: Samples
    gateway_mib: float
    monitor_mib: float


def config(machines: int, prefix: str) -> str:
    sections = "".join(f"[machines.ln{i}]\n" for i in range(1, machines + 1))
    return (
        '[auth]\nbackend = "pam"\n'
        f'[store]\nbackend = "redis"\nredis_url = "{REDIS_URL}"\nprefix = "{prefix}"\n'
        f'[monitor]\naccount = "hpcmon"\ninterval = {INTERVAL}\n{sections}'
    )


@contextmanager
def monitor_process(config_text: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``hpcgate monitor`` process with ``config_text``."""
    path = Path(tempfile.mkdtemp(prefix="hpcgate-scale-")) / "monitor.toml"
    path.write_text(config_text)
    process = subprocess.Popen(
        [sys.executable, "-m", "hpcgate", "monitor", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=20)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # its own time and that of the children it waited for (squeue, sinfo)
    return sum(int(n) for n in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def snapshots(client: redis.Redis, prefix: str, machines: int) -> list[dict[str, object]]:
    """Each machine's snapshot, with the bytes it and its users' job lists take."""
    found = []
    for i in range(1, machines + 1):
        raw = client.get(f"{prefix}snapshot:ln{i}")
        if raw is not None:
            jobs = client.hgetall(f"{prefix}jobs:ln{i}")
            size = sum(len(value) for value in jobs.values())
            found.append(json.loads(raw) | {"_bytes": len(raw), "_jobs_bytes": size})
    return found


def measure(jobs: int, machines: int, seconds: float) -> Row:
    prefix = f"hpcgate-scale-{secrets.token_hex(4)}:"
    client = redis.Redis.from_url(REDIS_URL)
    text = config(machines, prefix)
    try:
        with monitor_process(text) as monitor, Gateway(text) as gateway:
            started = time.time()

            def fresh() -> list[dict[str, object]] | None:
                found = snapshots(client, prefix, machines)
                complete = len(found) == machines
                newer = all(float(s["taken"]) > started + INTERVAL for s in found)  # type: ignore[arg-type]
                return found if complete and newer else None

            wait_for(fresh, timeout=120, interval=0.5, what="the monitor's second round")
            # at rest: the monitor's own load on slurmctld and on the machine
            slurmctld_rpcs(reset=True)
            cpu_before, rest_started = cpu_seconds(monitor.pid), time.monotonic()
            time.sleep(3 * INTERVAL)
            rest = time.monotonic() - rest_started
            rpc_per_minute = slurmctld_rpcs() / rest * 60
            monitor_cpu = (cpu_seconds(monitor.pid) - cpu_before) / rest
            found = snapshots(client, prefix, machines)

            host, port = host_port(gateway.url)
            headers = {"Authorization": f"Bearer {gateway.token('alice')}"}

            def connect() -> RawConnection:
                return RawConnection(host, port, headers)

            async def get(c: RawConnection, path: str) -> bool:
                return await c.get(path) == 200

            status = asyncio.run(cell(connect, lambda c: get(c, "/api/job"), 64, seconds))
            queue = asyncio.run(cell(connect, lambda c: get(c, "/api/job/ln1"), 64, seconds))
            assert gateway.process is not None
            return Row(
                jobs=jobs,
                machines=machines,
                probe_ms=1000 * sum(float(s["probe_seconds"]) for s in found) / len(found),  # type: ignore[arg-type]
                monitor_cpu=monitor_cpu,
                snapshot_kib=sum(int(s["_bytes"]) for s in found) / len(found) / 1024,  # type: ignore[call-overload]
                jobs_kib=sum(int(s["_jobs_bytes"]) for s in found) / len(found) / 1024,  # type: ignore[call-overload]
                rpc_per_minute=rpc_per_minute,
                status=status,
                queue=queue,
                gateway_mib=rss_mib(gateway.process.pid),
                monitor_mib=rss_mib(monitor.pid),
            )
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)


def hold(jobs: int) -> int:
    """Exactly ``jobs`` held jobs in the queue, a tenth of them alice's (at most OWN_JOBS).

    Slurm refuses the job that would make ``MaxJobCount`` (100,000 here), so 100,000 is
    held as 99,999; a queue that already holds what is asked is kept as it is.
    """
    jobs = min(jobs, MAX_HELD)
    own = min(OWN_JOBS, jobs // 10)
    wanted = {"alice": own, "bob": jobs - own}
    if restd.held_counts() != {user: n for user, n in wanted.items() if n}:
        restd.cancel_all("alice", "bob")
        restd.fill_queue(wanted)
    return jobs


HEADER = (
    "|   jobs | machines | probe (ms) | monitor CPU | snapshot (KiB) | job lists (KiB) "
    "| ctld RPC/min | status req/s | status p50 (ms) | queue req/s | queue p50 (ms) "
    "| gateway RSS (MiB) | monitor RSS (MiB) |\n"
    "|-------:|---------:|-----------:|------------:|---------------:|----------------:"
    "|-------------:|-------------:|----------------:|------------:|---------------:"
    "|------------------:|------------------:|"
)


def format_row(row: Row) -> str:
    return (
        f"| {row.jobs:6,} | {row.machines:8} | {row.probe_ms:10.0f} | {row.monitor_cpu:10.1%} "
        f"| {row.snapshot_kib:14.1f} | {row.jobs_kib:15.1f} | {row.rpc_per_minute:12.0f} "
        f"| {row.status.rate:12.0f} | {row.status.median * 1000:15.1f} "
        f"| {row.queue.rate:11.0f} | {row.queue.median * 1000:14.1f} "
        f"| {row.gateway_mib:17.1f} | {row.monitor_mib:17.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", default="100,1000,10000,100000", help="held jobs, comma-separated"
    )
    parser.add_argument(
        "--machines", default="1,2,4,8", help="machines, comma-separated ('' for none)"
    )
    parser.add_argument("--seconds", type=float, default=4, help="length of each load cell")
    parser.add_argument("--write", action="store_true", help="write the table to bench/README.md")
    args = parser.parse_args()

    restd.start()
    restd.forget_in_accounting()  # what earlier runs left
    rows: list[Row] = []
    print(HEADER, flush=True)
    for jobs in (int(n) for n in args.jobs.split(",") if n):
        rows.append(measure(hold(jobs), 1, args.seconds))
        print(format_row(rows[-1]), flush=True)
    fleet = [int(n) for n in args.machines.split(",") if n]
    if fleet:
        hold(1000)
    for machines in fleet:
        rows.append(measure(1000, machines, args.seconds))
        print(format_row(rows[-1]), flush=True)
    restd.cancel_all("alice", "bob")

    lines = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {describe_machine()}. ",
        f"Command: `.venv/bin/python -m bench.scale {shlex.join(sys.argv[1:])}`",
        "",
        HEADER,
        *(format_row(row) for row in rows),
    ]
    report = "\n".join(lines)
    print("\n" + report)
    if args.write:
        write_section("scale", report)


if __name__ == "__main__":
    main()
