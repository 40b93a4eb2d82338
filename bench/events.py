"""Job events: 0, 1, 100 and 1,000 SSE watchers on a cluster running short jobs.

    .venv/bin/python -m bench.events [--seconds 60] [--every 1] [--watchers 0,1,100,1000] [--write]

Needs root and the cluster of scripts/cluster. One real gateway (embedded SQLite store,
an embedded monitor probing every ``--interval`` s) and, in this process, N watchers
following ``GET /api/events`` (raw HTTP on loopback, all as alice: every event goes to
all of them) and one webhook receiver on 127.0.0.1. For each N, alice submits a short job
(``sleep 3``) through the gateway every ``--every`` s on average (random gaps, 0.5x to
1.5x) for ``--seconds`` s, then the run
waits for every job's final event. Printed per N:

- slurmctld RPCs per minute over the run (``sdiag`` deltas, never reset: other runs on the
  cluster count too), and those of the monitor's account (hpcmon) and of alice;
- the delay from the job's real state change to the event reaching a watcher and the
  webhook receiver, p50/p99/mean: the submit from when the POST was sent, the start and the
  end from the times the job's own script prints first and last (``date +%s.%N``, read
  from its output file afterwards: Slurm's Start and End are whole seconds);
- events of the run's jobs missing from a watcher or the receiver, and events a watcher
  got twice (the receiver's repeats are allowed: delivery is at least once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pwd
import random
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench import restd
from bench.common import Gateway, describe_machine, ensure_cluster, host_port, write_section

SCRIPT = "#!/bin/bash\ndate +%s.%N\nsleep 3\ndate +%s.%N\n"
FINAL = {"completed", "failed", "cancelled", "timeout", "ended"}
OPEN_AT_ONCE = 100  # watchers connecting together


def config(state: Path, interval: float) -> str:
    return f"""
[auth]
backend = "pam"

[server]
max_connections = 1500

[store]
path = "{state}"

[monitor]
account = "hpcmon"
interval = {interval}

[events]
heartbeat = 5
client_queue = 5000

[webhooks]
allow = ["127.0.0.1/32"]
retry_base = 0.5

[machines.ln3]
"""


def rpc_counts() -> dict[str, int]:
    """slurmctld's RPCs since its last reset: ``total`` (by message type) and by user."""
    text = subprocess.run(["sdiag"], check=True, capture_output=True, text=True).stdout
    by_type = text.split("by message type", 1)[1].split("by user", 1)[0]
    counts = {"total": sum(int(n) for n in re.findall(r"count:\s*(\d+)", by_type))}
    by_user = text.split("by user", 1)[1].split("Pending RPC", 1)[0]
    for user, count in re.findall(r"^\s*(\S+)\s+\(\s*\d+\)\s+count:(\d+)", by_user, re.M):
        counts[user] = int(count)
    return counts


@dataclass
class Watcher:
    """One SSE client: when each event id reached it."""

    arrived: dict[str, float] = field(default_factory=dict)
    doubled: int = 0
    error: str = ""
    answered: bool = False
    """The gateway answered the request (the stream is open, or refused)."""


async def watch(url: str, token: str, watcher: Watcher, opened: asyncio.Semaphore) -> None:
    """Follow alice's ln3 events on one HTTP/1.0 connection (the body ends at close, no
    chunking to undo) until cancelled."""
    host, port = host_port(url)
    async with opened:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET /api/events?machine=ln3 HTTP/1.0\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    watcher.answered = True
    try:
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            watcher.error = head.split(b"\r\n", 1)[0].decode()
            return
        event_id = ""
        while line := await reader.readline():
            if line.startswith(b"id: "):
                event_id = line[4:].strip().decode()
            elif line.startswith(b"data: ") and event_id:
                if event_id in watcher.arrived:
                    watcher.doubled += 1
                else:
                    watcher.arrived[event_id] = time.time()
            elif line.startswith(b"event: dropped"):
                watcher.error = "dropped by the gateway"
        watcher.error = watcher.error or "closed by the gateway"
    finally:
        writer.close()


class Receiver:
    """A webhook receiver on 127.0.0.1: when each event id first arrived, and repeats."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.repeats = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event_id = self.headers.get("Hpcgate-Event-Id", "")
                with receiver.lock:
                    if event_id in receiver.arrived:
                        receiver.repeats += 1
                    else:
                        receiver.arrived[event_id] = now
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stored_events(client: httpx.Client, jobids: set[str]) -> list[dict[str, Any]]:
    """alice's kept ln3 events of ``jobids``, oldest first."""
    found: list[dict[str, Any]] = []
    after = ""
    while True:
        answer = client.get(
            "/events",
            params={"machine": "ln3", "after": after, "limit": "1000"},
            headers={"Accept": "application/json"},
        ).json()["output"]
        if not answer["events"]:
            return found
        found += [e for e in answer["events"] if e["data"]["jobid"] in jobids]
        after = answer["last_id"]


def job_times(jobids: set[str], sent: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each job's submit (when its POST was sent), start and end (the times its script
    printed first and last, read as root from its output file beside the script)."""
    output_dir = Path(pwd.getpwnam("alice").pw_dir) / "newt"
    times: dict[str, dict[str, float]] = {}
    for jobid in jobids:
        times[jobid] = {"submit": sent[jobid]}
        with contextlib.suppress(OSError, ValueError):
            printed = (output_dir / f"slurm-{jobid}.out").read_text().split()
            times[jobid] |= {"start": float(printed[0]), "end": float(printed[-1])}
    return times


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Result:
    watchers: int
    jobs: int
    seconds: float
    rpcs: dict[str, float]
    stream: dict[str, list[float]]
    webhook: dict[str, list[float]]
    lost_stream: int
    doubled_stream: int
    lost_webhook: int
    repeated_webhook: int
    watcher_errors: int


def delays(
    events: list[dict[str, Any]], times: dict[str, dict[str, float]], arrived: dict[str, float]
) -> Iterator[tuple[str, float]]:
    """(what, seconds) from Slurm's timestamp of each change to its event's arrival."""
    for event in events:
        kind = event["type"].rsplit(".", 1)[1]
        stamp = {"pending": "submit", "running": "start"}.get(kind, "end" if kind in FINAL else "")
        real = times.get(event["data"]["jobid"], {}).get(stamp)
        if real is not None and event["id"] in arrived:
            yield stamp, arrived[event["id"]] - real


async def run_level(
    gateway: Gateway, token: str, receiver: Receiver, watchers: int, seconds: float, every: float
) -> Result:
    opened = asyncio.Semaphore(OPEN_AT_ONCE)
    clients = [Watcher() for _ in range(watchers)]
    tasks = [asyncio.create_task(watch(gateway.url, token, w, opened)) for w in clients]
    http = httpx.Client(base_url=f"{gateway.url}/api", timeout=60)
    http.headers["Authorization"] = f"Bearer {token}"
    try:
        while not all(client.answered for client in clients):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        before, started = rpc_counts(), time.monotonic()
        jobids: set[str] = set()
        sent: dict[str, float] = {}
        pacing = random.Random(watchers)
        while time.monotonic() - started < seconds:
            sending = time.time()
            answer = await asyncio.to_thread(
                http.post,
                "/job/ln3",
                data={"jobscript": SCRIPT, "jobconf": '{"job_name": "bench-events"}'},
            )
            jobid = str(answer.json()["output"]["jobid"])
            jobids.add(jobid)
            sent[jobid] = sending
            # random gaps, so that the changes fall at every phase of the monitor's cycle
            # (a fixed period locks onto it and shows a few phases only)
            await asyncio.sleep(every * pacing.uniform(0.5, 1.5))
        deadline = time.monotonic() + 90
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:  # until every job has ended and all is in
            events = await asyncio.to_thread(stored_events, http, jobids)
            ended = {e["data"]["jobid"] for e in events if e["type"].rsplit(".", 1)[1] in FINAL}
            ids = {e["id"] for e in events}
            if (
                ended == jobids
                and all(ids <= w.arrived.keys() for w in clients if not w.error)
                and ids <= receiver.arrived.keys()
            ):
                break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        after = rpc_counts()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        http.close()
    minutes = elapsed / 60
    rpcs = {
        name: (after.get(name, 0) - before.get(name, 0)) / minutes
        if after.get(name, 0) >= before.get(name, 0) and after["total"] >= before["total"]
        else float("nan")  # someone reset sdiag meanwhile
        for name in ("total", "hpcmon", "alice")
    }
    times = await asyncio.to_thread(job_times, jobids, sent)
    ids = {e["id"] for e in events}
    stream: dict[str, list[float]] = {"submit": [], "start": [], "end": []}
    for client in clients:
        for what, delay in delays(events, times, client.arrived):
            stream[what].append(delay)
    webhook: dict[str, list[float]] = {"submit": [], "start": [], "end": []}
    with receiver.lock:
        received = dict(receiver.arrived)
    for what, delay in delays(events, times, received):
        webhook[what].append(delay)
    return Result(
        watchers=watchers,
        jobs=len(jobids),
        seconds=elapsed,
        rpcs=rpcs,
        stream=stream,
        webhook=webhook,
        lost_stream=sum(len(ids - client.arrived.keys()) for client in clients),
        doubled_stream=sum(client.doubled for client in clients),
        lost_webhook=len(ids - received.keys()),
        repeated_webhook=receiver.repeats,
        watcher_errors=sum(bool(client.error) for client in clients),
    )


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f} / {mean:.2f}"


def table(results: list[Result]) -> str:
    lines = [
        "| watchers | jobs | ctld RPC/min (hpcmon, alice) | stream: submit | start | end "
        "| webhook: submit | start | end | lost | doubled |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rpcs = f"{r.rpcs['total']:.0f} ({r.rpcs['hpcmon']:.0f}, {r.rpcs['alice']:.0f})"
        lost = f"{r.lost_stream} + {r.lost_webhook}"
        doubled = f"{r.doubled_stream} (+{r.repeated_webhook} webhook repeats)"
        lines.append(
            f"| {r.watchers:,} | {r.jobs} | {rpcs} | {cell(r.stream['submit'])} "
            f"| {cell(r.stream['start'])} | {cell(r.stream['end'])} "
            f"| {cell(r.webhook['submit'])} | {cell(r.webhook['start'])} "
            f"| {cell(r.webhook['end'])} | {lost} | {doubled} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Result]:
    levels = [int(n) for n in args.watchers.split(",")]
    state = Path(tempfile.mkdtemp(prefix="hpcgate-bench-events-")) / "state.sqlite"
    receiver = Receiver()
    results = []
    try:
        with Gateway(config(state, args.interval)) as gateway:
            token = gateway.token("alice")
            created = httpx.post(
                f"{gateway.url}/api/subscriptions",
                json={"url": receiver.url, "machine": "ln3"},
                headers={"Authorization": f"Bearer {token}"},
            ).json()
            assert created["status"] == "OK", created
            await asyncio.sleep(2 * args.interval)  # the monitor's first look: the baseline
            for watchers in levels:
                result = await run_level(
                    gateway, token, receiver, watchers, args.seconds, args.every
                )
                results.append(result)
                print(json.dumps({"watchers": watchers, "rpcs": result.rpcs}), flush=True)
    finally:
        receiver.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="submitting, per level")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between submits")
    parser.add_argument("--interval", type=float, default=2.0, help="monitor.interval")
    parser.add_argument("--watchers", default="0,1,100,1000", help="comma-separated N")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    ensure_cluster()
    restd.forget_in_accounting()  # what earlier runs left
    results = asyncio.run(run(args))
    goal = args.interval / 2 + 0.5
    text = (
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {describe_machine()}\n\n"
        f"monitor.interval {args.interval:g} s (goal: p50 under {goal:g} s); a `sleep 3` job "
        f"submitted every {args.every:g} s on average (random gaps) for {args.seconds:g} s "
        "per row. Delays in "
        "seconds, p50 / p99 / mean, to arrival from the POST (submit) and from the times the "
        "job's script printed first and last (start, end); `lost` = stream + webhook "
        "events of the run's jobs missing.\n\n" + table(results)
    )
    print("\n" + text)
    if args.write:
        write_section("events", text)


if __name__ == "__main__":
    main()
