"""Soak: a bounded mixed load at a fixed rate; errors, memory and open files over time.

    .venv/bin/python -m bench.soak [--seconds 180] [--rate 20] [--runner local-helper]

Needs root and the cluster of scripts/cluster. Starts one gateway (production settings,
audit log on) and sends, at a fixed rate (an open loop: a slow answer does not slow the
load), a mix of logins (5%), submits (15%), queue listings (40%), status reads (25%) and
kills (15%, of the user's latest job) as alice and bob. An error is a transport failure,
a 5xx, or any answer other than the expected ones (a kill may find its job finished: 409;
a user with no job yet lists instead of killing).
Every 10 s it samples the gateway's resident memory and open file descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tests.conftest import PASSWORDS

from bench.common import Gateway, Samples, ensure_cluster

MIX = [("login", 5), ("submit", 15), ("queue", 40), ("status", 25), ("kill", 15)]
EXPECTED = {
    "login": {200},
    "submit": {200},
    "queue": {200},
    "status": {200},
    "kill": {200, 404, 409},
}


def resources(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and open file descriptors of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def soak(
    gateway: Gateway, seconds: float, rate: float
) -> tuple[Counter[str], Counter[str], Samples, list[tuple[float, int, int]]]:
    assert gateway.process is not None
    pid = gateway.process.pid
    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latency = Samples()
    samples: list[tuple[float, int, int]] = []
    latest: dict[str, str] = {}
    tokens = {user: gateway.token(user) for user in PASSWORDS}
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    random.seed(1)

    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:

        async def one(kind: str, user: str) -> None:
            headers = {"Authorization": f"Bearer {tokens[user]}"}
            start = time.monotonic()
            try:
                if kind == "login":
                    answer = await client.post(
                        "/api/auth", data={"username": user, "password": PASSWORDS[user]}
                    )
                elif kind == "submit":
                    answer = await client.post(
                        "/api/job/ln3",
                        headers=headers,
                        data={
                            "jobscript": "#!/bin/bash\nsleep 5\n",
                            "jobfilepath": "~/soak/job.sh",
                        },
                    )
                    if answer.status_code == 200:
                        latest[user] = answer.json()["output"]["jobid"]
                elif kind == "queue":
                    answer = await client.get("/api/job/ln3", headers=headers)
                elif kind == "status":
                    answer = await client.get("/api/job")
                elif user in latest:
                    answer = await client.delete(f"/api/job/ln3/{latest[user]}", headers=headers)
                else:  # nothing of theirs to kill yet: list instead
                    kind = "queue"
                    answer = await client.get("/api/job/ln3", headers=headers)
                ok = answer.status_code in EXPECTED[kind]
                status = str(answer.status_code)
            except httpx.HTTPError as exc:
                ok, status = False, repr(exc)
            latency.latencies.append(time.monotonic() - start)
            sent[kind] += 1
            if not ok:
                errors[kind] += 1
                print(f"unexpected answer to {kind}: {status}", flush=True)

        tasks = []
        start = time.monotonic()
        next_sample = start
        for n in range(int(seconds * rate)):
            due = start + n / rate
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - start, *resources(pid)))
                next_sample += 10
            await asyncio.sleep(max(0.0, due - now))
            tasks.append(
                asyncio.create_task(one(random.choice(kinds), random.choice(list(PASSWORDS))))
            )
        await asyncio.gather(*tasks)
        samples.append((time.monotonic() - start, *resources(pid)))
    return sent, errors, latency, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--rate", type=float, default=20, help="requests per second")
    parser.add_argument("--runner", default="local", help="the machine's transport")
    args = parser.parse_args()
    ensure_cluster()
    audit = Path("/tmp/hpcgate-soak-audit.log")
    config = f'[audit]\nfile = "{audit}"\n[monitor]\naccount = "hpcmon"\n[machines.ln3]\n'
    config += f'runner = "{args.runner}"\n'
    with Gateway(config) as gateway:
        sent, errors, latency, samples = asyncio.run(soak(gateway, args.seconds, args.rate))
    subprocess.run(["scancel", "--user=alice"], check=False)
    subprocess.run(["scancel", "--user=bob"], check=False)

    total = sum(sent.values())
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"# soak, {when}: {args.rate:g} req/s for {args.seconds:g} s, {args.runner}\n")
    print("| kind   | sent | errors |")
    print("|--------|-----:|-------:|")
    for kind, _ in MIX:
        print(f"| {kind:6} | {sent[kind]:4} | {errors[kind]:6} |")
    print(f"| all    | {total:4} | {sum(errors.values()):6} |")
    print(
        f"\nlatency p50 {latency.median * 1000:.1f} ms, p99 {latency.percentile(99) * 1000:.1f} ms"
    )
    print("\n| t (s) | RSS (MiB) | open fds |")
    print("|------:|----------:|---------:|")
    for t, rss, fds in samples:
        print(f"| {t:5.0f} | {rss / 1024:9.1f} | {fds:8} |")
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    growth = f"RSS {last[1] - first[1]:+d} KiB, fds {last[2] - first[2]:+d}"
    print(f"\nfrom t={first[0]:.0f}s to the end: {growth}")


if __name__ == "__main__":
    main()
