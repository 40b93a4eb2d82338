"""N users polling their own queue once a second: hpcgate vs a naive per-request squeue.

    .venv/bin/python bench/queue_load.py [--seconds 20] [--users 1,10,100,500]

Needs root and the cluster of scripts/cluster. For each N it runs, one after the other:
- hpcgate: N simulated users, each GET /api/job/ln3 once a second through a real gateway
  (production settings: monitors every 5 s, listings from snapshots up to 10 s old);
- naive: the same schedule, each poll one `squeue --user=...` process, as a gateway that
  asks the scheduler per request would.
and prints requests served, p50/p99 latency and slurmctld RPCs per minute (sdiag,
reset before each run; hpcgate's count includes its monitor's probes). Then it measures
GET /api/job at 64 concurrent connections. Simulated users alternate between the two
real accounts (alice, bob); the cost per request does not depend on who asks.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from bench.common import (
    Gateway,
    RawConnection,
    Samples,
    ensure_cluster,
    host_port,
    slurmctld_rpcs,
)

USERS = ("alice", "bob")
CONFIG = """
[auth]
backend = "pam"

[machines.ln3]
"""


async def poll_loop(
    request: Callable[[], Awaitable[bool]], seconds: float, samples: Samples
) -> None:
    """One user: a request every second (right away if the last took longer)."""
    await asyncio.sleep(random.random())
    end = time.monotonic() + seconds
    while (start := time.monotonic()) < end:
        try:
            ok = await request()
        except Exception:
            ok = False
        samples.latencies.append(time.monotonic() - start)
        samples.errors += not ok
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - start)))


async def through_hpcgate(gateway: Gateway, users: int, seconds: float) -> Samples:
    tokens = {user: gateway.token(user) for user in USERS}
    host, port = host_port(gateway.url)
    samples = Samples()

    def requester(user: str) -> tuple[RawConnection, Callable[[], Awaitable[bool]]]:
        connection = RawConnection(host, port, {"Authorization": f"Bearer {tokens[user]}"})

        async def request() -> bool:
            return await connection.get("/api/job/ln3") == 200

        return connection, request

    pairs = [requester(USERS[i % 2]) for i in range(users)]
    await asyncio.gather(*(poll_loop(request, seconds, samples) for _, request in pairs))
    for connection, _ in pairs:
        await connection.close()
    return samples


async def naive(users: int, seconds: float) -> Samples:
    samples = Samples()

    def requester(user: str) -> Callable[[], Awaitable[bool]]:
        async def request() -> bool:
            process = await asyncio.create_subprocess_exec(
                "squeue",
                "--noheader",
                f"--user={user}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            return await process.wait() == 0

        return request

    await asyncio.gather(
        *(poll_loop(requester(USERS[i % 2]), seconds, samples) for i in range(users))
    )
    return samples


async def status_throughput(gateway: Gateway, connections: int, seconds: float) -> Samples:
    host, port = host_port(gateway.url)
    samples = Samples()
    end = time.monotonic() + seconds

    async def worker() -> None:
        connection = RawConnection(host, port)
        while (start := time.monotonic()) < end:
            status = await connection.get("/api/job")
            samples.latencies.append(time.monotonic() - start)
            samples.errors += status != 200
        await connection.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return samples


def wrk(url: str, connections: int, seconds: float, headers: dict[str, str] | None = None) -> str:
    """wrk's view of the same load, as a cross-check of the Python load generator."""
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True)
    if shutil.which("wrk") is None:
        return "wrk not available"
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    done = subprocess.run(
        [*argv, url],
        capture_output=True,
        text=True,
    )
    rate = re.search(r"Requests/sec:\s*([\d.]+)", done.stdout)
    distribution = done.stdout.partition("Latency Distribution")[2]
    p50 = re.search(r"50%\s+(\S+)", distribution)
    p99 = re.search(r"99%\s+(\S+)", distribution)
    if not (rate and p50 and p99):
        return f"wrk failed: {done.stderr.strip()[:200]}"
    return f"{float(rate.group(1)):.0f} req/s, p50 {p50.group(1)}, p99 {p99.group(1)}"


def row(label: str, users: int, samples: Samples, rpcs: int, seconds: float) -> str:
    return (
        f"| {label:8} | {users:5} | {len(samples.latencies):8} | {samples.errors:6} | "
        f"{samples.median * 1000:8.1f} | {samples.percentile(99) * 1000:8.1f} | "
        f"{rpcs / seconds * 60:10.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of each run")
    parser.add_argument("--users", default="1,10,100,500", help="comma-separated N")
    args = parser.parse_args()
    levels = [int(n) for n in args.users.split(",")]
    ensure_cluster()
    print(f"# queue_load, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.seconds:g} s per run\n")
    print("| path     | users | requests | errors | p50 (ms) | p99 (ms) | ctld RPC/min |")
    print("|----------|------:|---------:|-------:|---------:|---------:|-------------:|")
    with Gateway(CONFIG) as gateway:
        time.sleep(6)  # let the embedded monitor take a first snapshot
        for users in levels:
            slurmctld_rpcs(reset=True)
            samples = asyncio.run(through_hpcgate(gateway, users, args.seconds))
            print(row("hpcgate", users, samples, slurmctld_rpcs(), args.seconds), flush=True)
            slurmctld_rpcs(reset=True)
            samples = asyncio.run(naive(users, args.seconds))
            print(row("naive", users, samples, slurmctld_rpcs(), args.seconds), flush=True)
        samples = asyncio.run(status_throughput(gateway, 64, args.seconds))
        print(
            f"\nGET /api/job, 64 connections, {args.seconds:g} s: "
            f"{len(samples.latencies) / args.seconds:.0f} req/s, "
            f"p50 {samples.median * 1000:.1f} ms, p99 {samples.percentile(99) * 1000:.1f} ms, "
            f"{samples.errors} errors"
        )
        print(f"the same with wrk -t2 -c64: {wrk(gateway.url + '/api/job', 64, args.seconds)}")


if __name__ == "__main__":
    main()
