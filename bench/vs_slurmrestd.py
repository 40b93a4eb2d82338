"""hpcgate vs slurmrestd vs the plain CLI, side by side, with slurmctld's load per request.

    .venv/bin/python -m bench.vs_slurmrestd [--seconds 4] [--concurrency 1,16,64,256]
                                            [--jobs 1000] [--scenarios status,queue,...]
                                            [--write]

Needs root. Starts slurmrestd with JWT (`scripts/cluster restd`) on the same cluster,
fills the queue with ``--jobs`` held jobs (a tenth alice's, the rest bob's), starts one
gateway with production settings (embedded monitor, snapshots) and measures, for each
concurrency, each scenario on each system for ``--seconds``:

- status:  GET /api/job  |  a bare ASGI app serving a body of the same size on the same
  server (the floor, bench.floor)  |  slurmrestd GET partitions, GET nodes  |  sinfo
- queue:   GET /api/job/ln3 (alice's)  |  the floor  |  slurmrestd GET jobs  |  squeue -u
- queued:  GET /api/job/ln3/<id> of a job waiting to start  |  slurmrestd GET job/<id>
  (slurmctld)  |  squeue -j <id>
- detail:  GET /api/job/ln3/<id>  |  slurmrestd GET slurmdb job/<id>  |  sacct -j <id>
- submit:  POST /api/job  |  slurmrestd POST job/submit  |  sbatch, all with one script
  whose jobs begin in an hour (so that starting jobs does not compete for the machine's
  two cores), cancelled after each cell

Each row: requests/s (over the wall time of the cell), p50, p99, errors, slurmctld RPCs
per request (sdiag, reset before each cell; hpcgate's include its monitor's probes), and
for the other systems hpcgate's throughput as a multiple of theirs and the difference of
the medians. The CLI runs as alice, switched to by `chroot --userspec` (what hpcgate's
local runner does; runuser or su would add a PAM session per call). The GETs are
cross-checked with wrk at 64 connections, to show the load generator is not the
bottleneck. ``--write`` puts the table, with date, machine and command, in
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

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
from bench.floor import serve_floor
from bench.queue_load import wrk
from hpcgate.accounts import UnixAccount

CONFIG = """
[auth]
backend = "pam"
[monitor]
account = "hpcmon"
[machines.ln3]
runner = "{runner}"
options = {{ submit = "{submit}" }}
"""
SUBMIT_NAME = "bench-submit"
SCRIPT = (
    f"#!/bin/bash\n#SBATCH --job-name={SUBMIT_NAME}\n#SBATCH --begin=now+1hour\n"
    "#SBATCH --output=/dev/null\ntrue\n"
)
Connect = Callable[[], RawConnection] | None


@dataclass
class Row:
    scenario: str
    system: str
    concurrency: int
    samples: Samples
    rpcs_per_request: float
    cli: bool


@dataclass
class System:
    name: str
    connect: Connect
    op: Callable[..., Awaitable[bool]]


def finished_job(user: str) -> str:
    done = subprocess.run(
        ["runuser", "-u", user, "--", "sbatch", "--parsable", "--wait", "--wrap=true"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    )
    return done.stdout.strip()


def held_job(user: str) -> str:
    """One of ``user``'s held jobs queued by ``restd.fill_queue``: a job waiting to start."""
    listed = subprocess.run(
        ["squeue", "--noheader", f"--user={user}", f"--name={restd.HELD_NAME}", "--format=%i"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return listed[0]


def same_size_body(gateway: Gateway, path: str) -> bytes:
    """A body of the size of alice's answer at ``path`` (what the floor serves)."""
    headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
    size = len(httpx.get(f"{gateway.url}{path}", headers=headers).content)
    return b'{"padding":"' + b"x" * max(0, size - 14) + b'"}'


def cancel_submitted() -> None:
    """Cancel the submit cells' jobs and wait until slurmctld has caught up (its agent and
    slurmdbd queues empty), so that the next cell does not meet a controller still busy
    with thousands of kills."""
    subprocess.run(["scancel", f"--name={SUBMIT_NAME}"], check=False)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        diag = subprocess.run(["sdiag"], capture_output=True, text=True).stdout
        queues = re.findall(r"(?:Agent|DBD Agent) queue size:\s*(\d+)", diag)
        if queues and not any(int(n) for n in queues):
            return
        time.sleep(1)


async def cell(
    connect: Connect, op: Callable[..., Awaitable[bool]], workers: int, seconds: float
) -> Samples:
    """``workers`` closed loops of ``op`` for ``seconds`` (requests in flight then finish)."""
    samples = Samples()
    started = time.monotonic()
    end = started + seconds

    async def worker() -> None:
        connection = connect() if connect else None
        while (start := time.monotonic()) < end:
            try:
                ok = await op(connection)
            except Exception:
                ok = False
            samples.latencies.append(time.monotonic() - start)
            samples.errors += not ok
        if connection is not None:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    samples.elapsed = time.monotonic() - started
    return samples


@functools.cache
def as_alice() -> list[str]:
    """The cheapest way for root to run a command as alice: the one hpcgate itself uses."""
    alice = UnixAccount.lookup("alice")
    groups = ",".join(f"+{gid}" for gid in alice.groups)
    return [
        "chroot",
        f"--userspec=+{alice.uid}:+{alice.gid}",
        f"--groups={groups}",
        "--skip-chdir",
        "/",
    ]


async def cli(*argv: str) -> bool:
    """``argv`` as alice, as a script on the login node would run it."""
    process = await asyncio.create_subprocess_exec(
        *as_alice(),
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd="/tmp",
    )
    return await process.wait() == 0


FLOOR = "bare ASGI floor"


def scenarios(
    gateway: Gateway, detail_id: str, queued_id: str, floors: dict[str, str]
) -> dict[str, list[System]]:
    """Each scenario's systems, hpcgate first. ``floors``: per scenario, the URL of a bare
    ASGI app answering a body of the same size as hpcgate's (bench.floor)."""
    host, port = host_port(gateway.url)
    gate_headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
    rest_headers = restd.headers("alice")
    form = urllib.parse.urlencode({"jobscript": SCRIPT}).encode()
    rest_job = restd.job_body(name=SUBMIT_NAME, begin_in=3600)
    script_file = Path("/tmp/hpcgate-bench-submit.sh")
    script_file.write_text(SCRIPT)
    script_file.chmod(0o644)

    def gate() -> RawConnection:
        return RawConnection(host, port, gate_headers)

    def rest() -> RawConnection:
        return RawConnection(*restd.ADDRESS, rest_headers)

    def floor(scenario: str) -> System:
        floor_host, floor_port = host_port(floors[scenario])
        return System(
            FLOOR,
            lambda: RawConnection(floor_host, floor_port, gate_headers),
            lambda c: get(c, "/"),
        )

    async def get(c: RawConnection, path: str) -> bool:
        return await c.get(path) == 200

    async def post(c: RawConnection, path: str, body: bytes, kind: str) -> bool:
        return (await c.request("POST", path, body, kind))[0] == 200

    api = restd.API
    return {
        "status": [
            System("hpcgate", gate, lambda c: get(c, "/api/job")),
            floor("status"),
            System("slurmrestd partitions", rest, lambda c: get(c, f"{api}/partitions")),
            System("slurmrestd nodes", rest, lambda c: get(c, f"{api}/nodes")),
            System("sinfo", None, lambda _: cli("sinfo")),
        ],
        "queue": [
            System("hpcgate", gate, lambda c: get(c, "/api/job/ln3")),
            floor("queue"),
            System("slurmrestd jobs", rest, lambda c: get(c, f"{api}/jobs")),
            System("squeue -u", None, lambda _: cli("squeue", "--user=alice")),
        ],
        "queued": [
            System("hpcgate", gate, lambda c: get(c, f"/api/job/ln3/{queued_id}")),
            System("slurmrestd job", rest, lambda c: get(c, f"{api}/job/{queued_id}")),
            System("squeue -j", None, lambda _: cli("squeue", f"--jobs={queued_id}")),
        ],
        "detail": [
            System("hpcgate", gate, lambda c: get(c, f"/api/job/ln3/{detail_id}")),
            System(
                "slurmrestd dbjob",
                rest,
                lambda c: get(c, f"/slurmdb/v0.0.38/job/{detail_id}"),
            ),
            System("sacct -j", None, lambda _: cli("sacct", "-j", detail_id)),
        ],
        "submit": [
            System(
                "hpcgate",
                gate,
                lambda c: post(c, "/api/job/ln3", form, "application/x-www-form-urlencoded"),
            ),
            System(
                "slurmrestd submit",
                rest,
                lambda c: post(c, f"{api}/job/submit", rest_job, "application/json"),
            ),
            System("sbatch", None, lambda _: cli("sbatch", "-Q", str(script_file))),
        ],
    }


HEADER = (
    "| what   | system                 | conc |   req/s | p50 (ms) | p99 (ms) | errors "
    "| RPC/req | hpcgate req/s x | hpcgate Δp50 (ms) |\n"
    "|--------|------------------------|-----:|--------:|---------:|---------:|-------:"
    "|--------:|----------------:|------------------:|"
)


def format_row(row: Row, ours: Row | None) -> str:
    s = row.samples
    if ours is None or ours is row:
        versus = f"| {'':>15} | {'':>17} |"
    else:
        ratio = ours.samples.rate / s.rate if s.rate else float("inf")
        delta = (ours.samples.median - s.median) * 1000
        versus = f"| {ratio:14.2f}x | {delta:+17.1f} |"
    return (
        f"| {row.scenario:6} | {row.system:22} | {row.concurrency:4} | {s.rate:7.0f} | "
        f"{s.median * 1000:8.1f} | {s.percentile(99) * 1000:8.1f} | {s.errors:6} | "
        f"{row.rpcs_per_request:7.2f} {versus}"
    )


def summary(rows: list[Row]) -> list[str]:
    """Per scenario: hpcgate's throughput as a multiple of the best slurmrestd read and of
    the CLI, over the concurrencies measured, and its slurmctld RPCs per request."""
    lines = []
    for scenario in dict.fromkeys(row.scenario for row in rows):
        group = [row for row in rows if row.scenario == scenario]
        ratios: dict[str, list[float]] = {"slurmrestd": [], "CLI": [], "the floor": []}
        ours_rpcs = []
        for concurrency in dict.fromkeys(row.concurrency for row in group):
            level = [row for row in group if row.concurrency == concurrency]
            ours = next(row for row in level if row.system == "hpcgate")
            ours_rpcs.append(ours.rpcs_per_request)
            rest = [row.samples.rate for row in level if row.system.startswith("slurmrestd")]
            cli_rates = [row.samples.rate for row in level if row.cli]
            floor_rates = [row.samples.rate for row in level if row.system == FLOOR]
            if floor_rates:
                ratios["the floor"].append(ours.samples.rate / floor_rates[0])
            if rest:
                ratios["slurmrestd"].append(ours.samples.rate / max(rest))
            if cli_rates:
                ratios["CLI"].append(ours.samples.rate / cli_rates[0])
        parts = [
            f"{min(values):.2f}-{max(values):.2f}x {who}"
            for who, values in ratios.items()
            if values
        ]
        lines.append(
            f"- **{scenario}**: hpcgate's req/s = {', '.join(parts)}; "
            f"slurmctld RPCs per hpcgate request {min(ours_rpcs):.2f}-{max(ours_rpcs):.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4, help="length of each cell")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--jobs", type=int, default=1000, help="held jobs queued meanwhile")
    parser.add_argument(
        "--scenarios",
        default="status,queue,queued,detail,submit",
        help="comma-separated subset",
    )
    parser.add_argument(
        "--runner", default="local", help="the gateway's transport: local or local-helper"
    )
    parser.add_argument(
        "--submit",
        default="sbatch",
        choices=("sbatch", "rpc"),
        help="how the gateway submits: sbatch, or rpc (libslurm from the user's helper: "
        "needs --runner local-helper)",
    )
    parser.add_argument("--write", action="store_true", help="write the table to bench/README.md")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    chosen = args.scenarios.split(",")

    restd.start()
    restd.cancel_all("alice", "bob")
    restd.forget_in_accounting()  # what earlier runs left (the cancels above land later)
    restd.fill_queue({"alice": args.jobs // 10, "bob": args.jobs - args.jobs // 10})
    detail_id = finished_job("alice")
    queued_id = held_job("alice")
    newt = Path("~alice/newt").expanduser()
    scripts_before = set(newt.glob("newt_*.sh"))

    rows: list[Row] = []
    print(HEADER, flush=True)
    with contextlib.ExitStack() as stack:
        config = CONFIG.format(runner=args.runner, submit=args.submit)
        gateway = stack.enter_context(Gateway(config))
        time.sleep(6)  # a first snapshot
        floors = {
            scenario: stack.enter_context(serve_floor(same_size_body(gateway, path)))
            for scenario, path in (("status", "/api/job"), ("queue", "/api/job/ln3"))
        }
        for scenario, systems in scenarios(gateway, detail_id, queued_id, floors).items():
            if scenario not in chosen:
                continue
            for workers in levels:
                ours: Row | None = None
                for system in systems:
                    slurmctld_rpcs(reset=True)
                    samples = asyncio.run(cell(system.connect, system.op, workers, args.seconds))
                    rpcs = slurmctld_rpcs() / max(1, len(samples.latencies))
                    row = Row(scenario, system.name, workers, samples, rpcs, system.connect is None)
                    ours = ours or row
                    rows.append(row)
                    print(format_row(row, ours), flush=True)
                    if scenario == "submit":
                        cancel_submitted()
        checks = [
            f"hpcgate `GET /api/job`: {wrk(f'{gateway.url}/api/job', 64, args.seconds)}",
            f"bare ASGI floor (status-sized body): {wrk(floors['status'], 64, args.seconds)}",
            "slurmrestd `GET partitions`: "
            + wrk(
                f"http://{restd.ADDRESS[0]}:{restd.ADDRESS[1]}{restd.API}/partitions",
                64,
                args.seconds,
                headers=restd.headers("alice"),
            ),
        ]
    restd.cancel_all("alice", "bob")
    for script in set(newt.glob("newt_*.sh")) - scripts_before:
        script.unlink()

    when = datetime.now(UTC)
    lines = [
        f"### {when:%Y-%m-%d %H:%M} UTC, {args.jobs:,} held jobs queued",
        "",
        f"Machine: {describe_machine()}. ",
        f"Command: `.venv/bin/python -m bench.vs_slurmrestd {' '.join(sys.argv[1:])}`",
        "",
        HEADER,
        *(format_row(row, _ours(rows, row)) for row in rows),
        "",
        "wrk -t2 -c64, same run (the load generator's cross-check):",
        "",
        *(f"- {check}" for check in checks),
        "",
        *summary(rows),
    ]
    report = "\n".join(lines)
    print("\n" + report)
    if args.write:
        write_section("vs_slurmrestd", report)


def _ours(rows: list[Row], row: Row) -> Row | None:
    return next(
        (
            other
            for other in rows
            if other.system == "hpcgate"
            and (other.scenario, other.concurrency) == (row.scenario, row.concurrency)
        ),
        None,
    )


if __name__ == "__main__":
    main()
