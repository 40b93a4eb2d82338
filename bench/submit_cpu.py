"""Where a submit's CPU goes, process by process: hpcgate's paths vs slurmrestd, one run.

    .venv/bin/python -m bench.submit_cpu [--seconds 6] [--concurrency 1,16,64]
                                         [--systems rpc,sbatch,slurmrestd]

Needs root and the cluster of ``scripts/cluster``. For each system and concurrency,
closed loops of submits for ``--seconds`` (the submit scenario of ``bench.vs_slurmrestd``:
one script whose jobs begin in an hour, cancelled after each cell), after a second of
warm-up, and the CPU time (user + system, from ``/proc``) each process spent meanwhile,
divided by the submits:

- **rpc**: ``POST /api/job`` through a gateway with ``runner = "local-helper"`` and
  ``submit = "rpc"`` (the user's helper calls libslurm);
- **sbatch**: the same gateway and transport submitting with sbatch (the helper's
  children, reaped by it, count as the helper's);
- **slurmrestd**: ``POST job/submit`` with JWT, as alice.

Rows: requests/s, p50, and milliseconds of CPU per submit in the server (the gateway's
process, or slurmrestd), the user's helper, slurmctld, munged, slurmdbd and the load
generator, their sum, and the **ceiling** that sum allows on this machine's cores (cores
/ CPU per submit): the rate a system would reach if the CPU were its only limit. The
gateway's figure includes its embedded monitor (a probe every 5 s), as deployed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import restd
from bench.common import Gateway, RawConnection, Samples, describe_machine, host_port
from bench.vs_slurmrestd import CONFIG, SCRIPT, SUBMIT_NAME, cancel_submitted, cell

TICK = os.sysconf("SC_CLK_TCK")
PROCESSES = ("server", "helper", "slurmctld", "munged", "slurmdbd", "loadgen")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of ``pid`` (and of its reaped children) so far; 0 once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICK


def pids(*pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", *pattern], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def usage(server: int) -> dict[str, float]:
    """CPU seconds so far of each process that takes part in a submit."""
    return {
        "server": cpu_seconds(server),
        "helper": sum(
            cpu_seconds(pid, children=True) for pid in pids("-u", "alice", "-f", "python3 -I -S")
        ),
        "slurmctld": sum(map(cpu_seconds, pids("-x", "slurmctld"))),
        "munged": sum(map(cpu_seconds, pids("-x", "munged"))),
        "slurmdbd": sum(map(cpu_seconds, pids("-x", "slurmdbd"))),
        "loadgen": time.process_time(),
    }


def measure(
    server: int,
    connect: Callable[[], RawConnection],
    post: Callable[[RawConnection], Awaitable[bool]],
    concurrency: int,
    seconds: float,
) -> tuple[Samples, dict[str, float]]:
    """One cell: its samples and each process's CPU milliseconds per submit."""
    asyncio.run(cell(connect, post, concurrency, 1.0))  # helpers started, connections warm
    before = usage(server)
    samples = asyncio.run(cell(connect, post, concurrency, seconds))
    after = usage(server)
    cancel_submitted()
    submits = max(1, len(samples.latencies) - samples.errors)
    return samples, {name: (after[name] - before[name]) * 1e3 / submits for name in PROCESSES}


def row(system: str, concurrency: int, samples: Samples, cpu: dict[str, float]) -> str:
    total = sum(cpu.values())
    ceiling = (os.cpu_count() or 1) * 1e3 / total if total else 0.0
    cells = " | ".join(f"{cpu[name]:.2f}" for name in PROCESSES)
    return (
        f"| {system} | {concurrency} | {samples.rate:.0f} | {samples.median * 1e3:.1f} | "
        f"{cells} | **{total:.2f}** | {ceiling:.0f} |"
    )


def slurmrestd_cells(levels: list[int], seconds: float) -> list[str]:
    restd.start()
    server = pids("-x", "slurmrestd")[0]
    headers = restd.headers("alice")
    body = restd.job_body(name=SUBMIT_NAME, begin_in=3600)

    async def post(connection: RawConnection) -> bool:
        answer = await connection.request(
            "POST", f"{restd.API}/job/submit", body, "application/json"
        )
        return answer[0] == 200

    def connect() -> RawConnection:
        return RawConnection(*restd.ADDRESS, headers)

    rows = []
    for level in levels:
        rows.append(row("slurmrestd", level, *measure(server, connect, post, level, seconds)))
        print(rows[-1], flush=True)
    return rows


def gateway_cells(submit: str, levels: list[int], seconds: float) -> list[str]:
    form = urllib.parse.urlencode({"jobscript": SCRIPT}).encode()
    rows = []
    with Gateway(CONFIG.format(runner="local-helper", submit=submit)) as gateway:
        time.sleep(6)  # a first snapshot
        host, port = host_port(gateway.url)
        auth = {"Authorization": f"Bearer {gateway.token('alice')}"}
        assert gateway.process is not None

        async def post(connection: RawConnection) -> bool:
            kind = "application/x-www-form-urlencoded"
            return (await connection.request("POST", "/api/job/ln3", form, kind))[0] == 200

        def connect() -> RawConnection:
            return RawConnection(host, port, auth)

        for level in levels:
            measured = measure(gateway.process.pid, connect, post, level, seconds)
            rows.append(row(f"hpcgate {submit}", level, *measured))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--systems", default="rpc,sbatch,slurmrestd")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    lines = [
        f"Machine: {describe_machine()}. Command: `.venv/bin/python -m bench.submit_cpu "
        f"--seconds {args.seconds:g} --concurrency {args.concurrency} --systems {args.systems}`",
        "",
        "| system | conc | req/s | p50 (ms) | server | helper | slurmctld | munged | slurmdbd "
        "| load gen. | CPU ms/submit | ceiling (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cancel_submitted()
    for system in args.systems.split(","):
        if system == "slurmrestd":
            lines += slurmrestd_cells(levels, args.seconds)
        else:
            lines += gateway_cells(system, levels, args.seconds)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
