"""Status and queue throughput of one gateway served by 1, 2 and N worker processes.

    .venv/bin/python -m bench.workers [--workers 1,2,4] [--connections 64]
                                      [--seconds 5] [--write]

Needs root and the machine's Redis. Deployed as ``hpcgate serve --workers N`` is meant to
run: a Redis store (a key prefix of its own, deleted at the end), one ``hpcgate monitor``
process, and the gateway with ``server.workers = N`` (the same as ``--workers N``). For
each N: ``GET /api/job`` (every machine's status) and alice's ``GET /api/job/ln3`` (her
queue, from the snapshot) at ``--connections`` keep-alive connections for ``--seconds``,
req/s and latency percentiles, with the ratio to one worker. The load generator is one
Python process (``bench/common.py``'s raw HTTP/1.1 client) on the same machine, so on a
machine with few cores it takes some of the CPU the workers would use. ``--write`` puts
the table in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from tests.conftest import REDIS_URL, wait_for

from bench.common import (
    Gateway,
    RawConnection,
    Samples,
    describe_machine,
    ensure_cluster,
    host_port,
    write_section,
)
from bench.scale import monitor_process
from bench.vs_slurmrestd import cell


@dataclass
class Row:
    workers: int
    route: str
    samples: Samples


def config(prefix: str, workers: int) -> str:
    return (
        f'[server]\nworkers = {workers}\n[auth]\nbackend = "pam"\n'
        f'[store]\nbackend = "redis"\nredis_url = "{REDIS_URL}"\nprefix = "{prefix}"\n'
        '[monitor]\naccount = "hpcmon"\n[machines.ln3]\n'
    )


def measure(workers: list[int], connections: int, seconds: float) -> list[Row]:
    prefix = f"hpcgate-workers-{secrets.token_hex(4)}:"
    client = redis.Redis.from_url(REDIS_URL)
    rows = []
    try:
        with monitor_process(config(prefix, 1)):
            wait_for(
                lambda: client.get(f"{prefix}snapshot:ln3"),
                timeout=60,
                what="the monitor's first snapshot",
            )
            for count in workers:
                with Gateway(config(prefix, count)) as gateway:
                    host, port = host_port(gateway.url)
                    headers = {"Authorization": f"Bearer {gateway.token('alice')}"}

                    def connect(
                        h: str = host, p: int = port, extra: dict[str, str] = headers
                    ) -> RawConnection:
                        return RawConnection(h, p, extra)

                    for route in ("/api/job", "/api/job/ln3"):

                        async def get(c: RawConnection, path: str = route) -> bool:
                            return await c.get(path) == 200

                        asyncio.run(cell(connect, get, connections, 1.0))  # warm every worker
                        samples = asyncio.run(cell(connect, get, connections, seconds))
                        rows.append(Row(count, route, samples))
                        print(format_row(rows[-1], rows), flush=True)
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
    return rows


HEADER = (
    "| route            | workers |  req/s | vs 1 worker | p50 (ms) | p99 (ms) | errors |\n"
    "|------------------|--------:|-------:|------------:|---------:|---------:|-------:|"
)


def format_row(row: Row, rows: list[Row]) -> str:
    one = next((r for r in rows if r.route == row.route and r.workers == 1), None)
    ratio = f"{row.samples.rate / one.samples.rate:.2f}x" if one and one.samples.rate else "-"
    name = "GET " + row.route
    return (
        f"| {name:<16} | {row.workers:7} | {row.samples.rate:6.0f} | {ratio:>11} "
        f"| {row.samples.median * 1000:8.1f} | {row.samples.percentile(99) * 1000:8.1f} "
        f"| {row.samples.errors:6} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=5, help="length of each load cell")
    parser.add_argument("--write", action="store_true", help="write the table to bench/README.md")
    args = parser.parse_args()
    ensure_cluster()
    counts = [int(n) for n in args.workers.split(",")]
    if 1 not in counts:
        counts.insert(0, 1)  # the baseline
    started = time.time()
    print(HEADER)
    rows = measure(counts, args.connections, args.seconds)
    rows.sort(key=lambda r: (r.route, r.workers))
    table = "\n".join([HEADER, *(format_row(row, rows) for row in rows)])
    print()
    print(table)
    if args.write:
        when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = (
            f".venv/bin/python -m bench.workers --workers {args.workers} "
            f"--connections {args.connections} --seconds {args.seconds:g} --write"
        )
        write_section(
            "workers",
            f"### {when}, {describe_machine()}\n\n`{command}`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
