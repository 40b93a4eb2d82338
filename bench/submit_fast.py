"""Commands and submits through the ``local`` and ``local-helper`` transports, side by side.

    .venv/bin/python -m bench.submit_fast [--requests 200] [--concurrency 1,16,64]

In-process, at the runner (no HTTP): a command is ``run_command_line(alice, "true")``; a
submit is what ``Machine._submit`` does through the runner for a new script, the script
written to ``~/newt`` as alice and then ``sbatch --parsable`` run as alice (held jobs,
cancelled at the end). Prints p50/p90 latency and actions/s per cell, and the share of a
submit that is sbatch alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

from hpcgate.accounts import UnixAccount
from hpcgate.config import LimitsConfig
from hpcgate.process import Limits
from hpcgate.runners.local import LocalRunner
from hpcgate.runners.local_helper import HelperRunner

DEFAULTS = LimitsConfig()
LIMITS = Limits(30, 1 << 20, DEFAULTS.max_processes, DEFAULTS.max_memory_bytes)
"""What a gateway's actions run under by default (the address-space limit included)."""
NAME = "bench-submit-fast"
SCRIPT = b"#!/bin/bash\ntrue\n"


async def cell(
    action: Callable[[int], Awaitable[object]], requests: int, concurrency: int
) -> tuple[float, float, float]:
    """(p50 ms, p90 ms, actions/s) of ``requests`` actions, ``concurrency`` at a time."""
    latencies: list[float] = []
    numbers = iter(range(requests))

    async def worker() -> None:
        for number in numbers:
            started = time.perf_counter()
            await action(number)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    deciles = statistics.quantiles(latencies, n=10)
    return statistics.median(latencies) * 1e3, deciles[-1] * 1e3, requests / wall


async def main(requests: int, concurrencies: list[int]) -> None:
    alice = UnixAccount.lookup("alice")
    runners = {"local": LocalRunner(), "local-helper": HelperRunner()}

    def command(runner: LocalRunner) -> Callable[[int], Awaitable[object]]:
        return lambda _: runner.run_command_line(alice, "true", limits=LIMITS)

    def write(runner: LocalRunner) -> Callable[[int], Awaitable[object]]:
        return lambda n: runner.write_file(
            alice, f"{alice.home}/newt/bench-{n}.sh", SCRIPT, limits=LIMITS
        )

    def submit(runner: LocalRunner) -> Callable[[int], Awaitable[object]]:
        async def one(n: int) -> None:
            path = f"{alice.home}/newt/bench-{n}.sh"
            await runner.write_file(alice, path, SCRIPT, limits=LIMITS)
            argv = ["sbatch", "--parsable", "--hold", f"--job-name={NAME}", "-o", "/dev/null"]
            done = await runner.run(alice, [*argv, "--", path], limits=LIMITS)
            assert done.ok, done.stderr

        return one

    def sbatch_only(runner: LocalRunner) -> Callable[[int], Awaitable[object]]:
        argv = ["sbatch", "--parsable", "--hold", f"--job-name={NAME}", "-o", "/dev/null"]
        return lambda _: runner.run(
            alice, [*argv, "--", f"{alice.home}/newt/bench-0.sh"], limits=LIMITS
        )

    print(f"{'action':12} {'runner':13} {'conc':>4} {'p50 ms':>7} {'p90 ms':>7} {'per s':>7}")
    try:
        for kind, make in (
            ("command", command),
            ("write", write),
            ("submit", submit),
            ("sbatch", sbatch_only),
        ):
            for concurrency in concurrencies:
                for name, runner in runners.items():
                    await make(runner)(0)  # warm: the helper is up, the directory made
                    p50, p90, rate = await cell(make(runner), requests, concurrency)
                    print(f"{kind:12} {name:13} {concurrency:4} {p50:7.2f} {p90:7.2f} {rate:7.0f}")
                if kind in ("submit", "sbatch"):
                    subprocess.run(["scancel", "-u", "alice", f"--name={NAME}"], check=False)
    finally:
        for runner in runners.values():
            await runner.close()
        subprocess.run(["scancel", "-u", "alice", f"--name={NAME}"], check=False)
        subprocess.run(["sh", "-c", f"rm -f {alice.home}/newt/bench-*.sh"], check=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", default="1,16,64")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, [int(c) for c in arguments.concurrency.split(",")]))
