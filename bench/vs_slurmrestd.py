"""hpcgate vs slurmrestd vs the plain CLI, side by side, with slurmctld's load per request.

    .venv/bin/python -m bench.vs_slurmrestd [--seconds 5] [--concurrency 1,16,64,256]
                                            [--jobs 1000]

Needs root. Brings up the cluster with slurmrestd (JWT, `scripts/cluster restd`), fills
the queue with ~``--jobs`` held jobs (a tenth alice's, the rest bob's), starts one
gateway with production settings (embedded monitor, snapshots), and measures, for each
concurrency, each scenario on each system for ``--seconds``:

- status:  GET /api/job  |  slurmrestd GET partitions, GET nodes  |  sinfo
- queue:   GET /api/job/ln3 (alice's)  |  slurmrestd GET jobs  |  squeue -u alice
- detail:  GET /api/job/ln3/<id>  |  slurmrestd GET slurmdb job/<id>  |  sacct -j <id>
- submit:  POST /api/job  |  slurmrestd POST job/submit  |  sbatch  (jobs that run `true`)

Each row: requests/s, p50, p99, errors, and slurmctld RPCs per request (sdiag, reset
before each cell; hpcgate's include its monitor's probes in that time). The CLI runs as
root (no runuser in the measured path). GETs are cross-checked with wrk at 64
connections, to show the Python load generator is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from bench.common import REPO, Gateway, RawConnection, Samples, host_port, slurmctld_rpcs
from bench.queue_load import wrk

RESTD = ("127.0.0.1", 6820)
CONFIG = '[auth]\nbackend = "pam"\n[monitor]\naccount = "hpcmon"\n[machines.ln3]\n'
Op = Callable[[RawConnection], Awaitable[bool]]


def restd_token(user: str) -> str:
    out = subprocess.run(
        ["scontrol", "token", f"username={user}", "lifespan=7200"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split("=", 1)[1]


def fill_queue(jobs: int) -> None:
    for user, count in (("alice", jobs // 10), ("bob", jobs - jobs // 10)):
        subprocess.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                "bash",
                "-c",
                f"cd /tmp && for i in $(seq {count}); do sbatch -Q --hold --wrap=true; done",
            ],
            check=True,
        )


def finished_job(user: str) -> str:
    done = subprocess.run(
        ["runuser", "-u", user, "--", "sbatch", "--parsable", "--wait", "--wrap=true"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    )
    return done.stdout.strip()


async def cell(
    make: Callable[[], RawConnection] | None,
    op: Callable[..., Awaitable[bool]],
    workers: int,
    seconds: float,
) -> Samples:
    samples = Samples()
    end = time.monotonic() + seconds

    async def worker() -> None:
        connection = make() if make else None
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
    return samples


async def cli(*argv: str) -> bool:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd="/tmp"
    )
    return await process.wait() == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--scenarios", default="status,queue,detail,submit", help="comma-separated subset"
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    subprocess.run([str(REPO / "scripts" / "cluster"), "restd"], check=True)
    subprocess.run(["scancel", "--user=alice"], check=False)
    subprocess.run(["scancel", "--user=bob"], check=False)
    fill_queue(args.jobs)
    detail_id = finished_job("alice")
    rest_headers = {"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": restd_token("alice")}
    script = "#!/bin/bash\ntrue\n"
    form = urllib.parse.urlencode({"jobscript": script, "jobfilepath": "~/bench/job.sh"}).encode()
    rest_job = json.dumps(
        {
            "script": script,
            "job": {"environment": {"PATH": "/bin"}, "current_working_directory": "/tmp"},
        }
    ).encode()

    rows: list[tuple[str, str, int, Samples, float]] = []
    with Gateway(CONFIG) as gateway:
        host, port = host_port(gateway.url)
        gate_headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
        time.sleep(6)  # a first snapshot

        def gate() -> RawConnection:
            return RawConnection(host, port, gate_headers)

        def rest() -> RawConnection:
            return RawConnection(*RESTD, rest_headers)

        async def status_ok(c: RawConnection, path: str) -> bool:
            return await c.get(path) == 200

        async def post_ok(c: RawConnection, path: str, body: bytes, kind: str) -> bool:
            return (await c.request("POST", path, body, kind))[0] == 200

        scenarios: list[tuple[str, list[tuple[str, Callable[[], RawConnection] | None, Op]]]] = [
            (
                "status",
                [
                    ("hpcgate", gate, lambda c: status_ok(c, "/api/job")),
                    (
                        "slurmrestd partitions",
                        rest,
                        lambda c: status_ok(c, "/slurm/v0.0.38/partitions"),
                    ),
                    ("slurmrestd nodes", rest, lambda c: status_ok(c, "/slurm/v0.0.38/nodes")),
                    ("sinfo", None, lambda _: cli("sinfo")),
                ],
            ),
            (
                "queue",
                [
                    ("hpcgate", gate, lambda c: status_ok(c, "/api/job/ln3")),
                    ("slurmrestd jobs", rest, lambda c: status_ok(c, "/slurm/v0.0.38/jobs")),
                    ("squeue -u", None, lambda _: cli("squeue", "--user=alice")),
                ],
            ),
            (
                "detail",
                [
                    ("hpcgate", gate, lambda c: status_ok(c, f"/api/job/ln3/{detail_id}")),
                    (
                        "slurmrestd dbjob",
                        rest,
                        lambda c: status_ok(c, f"/slurmdb/v0.0.38/job/{detail_id}"),
                    ),
                    ("sacct -j", None, lambda _: cli("sacct", "-j", detail_id)),
                ],
            ),
            (
                "submit",
                [
                    (
                        "hpcgate",
                        gate,
                        lambda c: post_ok(
                            c, "/api/job/ln3", form, "application/x-www-form-urlencoded"
                        ),
                    ),
                    (
                        "slurmrestd submit",
                        rest,
                        lambda c: post_ok(
                            c, "/slurm/v0.0.38/job/submit", rest_job, "application/json"
                        ),
                    ),
                    ("sbatch", None, lambda _: cli("sbatch", "-Q", "--wrap=true")),
                ],
            ),
        ]
        chosen = args.scenarios.split(",")
        for scenario, systems in scenarios:
            if scenario not in chosen:
                continue
            for workers in levels:
                for name, make, op in systems:
                    seconds = min(args.seconds, 3) if scenario == "submit" else args.seconds
                    slurmctld_rpcs(reset=True)
                    samples = asyncio.run(cell(make, op, workers, seconds))
                    rpcs = slurmctld_rpcs()
                    rows.append(
                        (scenario, name, workers, samples, rpcs / max(1, len(samples.latencies)))
                    )
                    print_row(rows[-1], seconds)
            if scenario == "submit":
                for user in ("alice", "root"):
                    subprocess.run(["scancel", f"--user={user}"], check=False)
        checks = [
            ("hpcgate GET /api/job", wrk(f"{gateway.url}/api/job", 64, args.seconds)),
            (
                "slurmrestd GET partitions",
                wrk_rest("/slurm/v0.0.38/partitions", rest_headers, args.seconds),
            ),
        ]
    subprocess.run(["scancel", "--user=bob"], check=False)
    print(f"\n# vs_slurmrestd, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.jobs} jobs queued")
    for label, result in checks:
        print(f"wrk -c64 {label}: {result}")


def wrk_rest(path: str, headers: dict[str, str], seconds: float) -> str:
    import shutil

    if shutil.which("wrk") is None:
        return "wrk not available"
    argv = ["wrk", "-t2", "-c64", f"-d{seconds:g}s", "--latency"]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    done = subprocess.run(
        [*argv, f"http://{RESTD[0]}:{RESTD[1]}{path}"], capture_output=True, text=True
    )
    rate = [line for line in done.stdout.splitlines() if "Requests/sec" in line]
    return rate[0].strip() if rate else f"wrk failed: {done.stderr.strip()[:200]}"


def print_row(row: tuple[str, str, int, Samples, float], seconds: float) -> None:
    scenario, name, workers, samples, per_request = row
    print(
        f"| {scenario:6} | {name:22} | {workers:4} | {len(samples.latencies) / seconds:8.0f} | "
        f"{samples.median * 1000:8.1f} | {samples.percentile(99) * 1000:8.1f} | "
        f"{samples.errors:6} | {per_request:7.2f} |",
        flush=True,
    )


HEADER = (
    "| what   | system                 | conc |    req/s | p50 (ms) | p99 (ms) "
    "| errors | RPC/req |\n"
    "|--------|------------------------|-----:|---------:|---------:|---------:"
    "|-------:|--------:|"
)

if __name__ == "__main__":
    print(HEADER)
    main()
