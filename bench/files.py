"""File transfers and job output: hpcgate vs sftp/scp vs a plain local cat, side by side.

    .venv/bin/python -m bench.files [--size-mib 1024] [--lines 100] [--write-readme]

Needs root and the cluster of scripts/cluster. Starts two real sshd's on loopback as login
nodes (the test suite's, with OpenSSH's sftp-server) and one gateway with two machines on
this host: ``local`` (the local runner) and ``ssh`` (SFTP over the user's pooled SSH
connection). Every transfer is alice's, of the same file of random bytes (in the page
cache: the figures are the transports', not the disk's):

- download: ``GET /api/file/<m>/<path>?view=read`` read to the end by curl; ``sftp get``
  and ``scp`` from the same login node with a certificate for alice; ``cat`` as alice.
- upload: ``PUT /api/file/<m>/<path>`` streamed by curl; ``sftp put``, ``scp``; ``cat``.

The gateway's resident memory is sampled every 50 ms during each transfer (the growth is
the peak minus the resident size before it). Output delay: a job prints a timestamp every
0.1 s; a client follows its output (``Accept: text/event-stream``) and takes, for each
line, the time it arrived minus the time the job printed it (one host, one clock).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tests.conftest import free_port
from tests.login_nodes import LoginNodes

from bench.common import Gateway, describe_machine, ensure_cluster, write_section

MiB = 1024 * 1024
ALICE = ["runuser", "-u", "alice", "--"]
STAMP = re.compile(r"\d+\.\d+\Z")


def config(nodes: LoginNodes) -> str:
    hosts = ", ".join(f'"127.0.0.1:{port}"' for port in nodes.ports)
    ssh = f'hosts = [{hosts}], known_hosts = "{nodes.known_hosts}", ca_key = "{nodes.ca_key}"'
    return f"""
[auth]
backend = "pam"

[monitor]
account = "hpcmon"

[machines.local]

[machines.ssh]
runner = "ssh"
ssh = {{ {ssh} }}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Measured:
    """Runs one transfer, timing it and sampling the gateway's resident memory."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def __call__(self, transfer: Callable[[], None], size: int) -> tuple[float, float]:
        """(MB/s, growth of the gateway's RSS in MiB; 0 when no gateway served it)."""
        start_rss = rss_kib(self.pid) if self.pid else 0
        peak = start_rss
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.05):
                if self.pid:
                    peak = max(peak, rss_kib(self.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        try:
            transfer()
        finally:
            took = time.perf_counter() - began
            stop.set()
            sampler.join()
        return size / took / 1e6, (peak - start_rss) / 1024


def as_alice(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "alice", "--", *argv], check=True)


def alice_certificate(nodes: LoginNodes, directory: Path) -> list[str]:
    """ssh options that log in as alice with a certificate from the login nodes' CA."""
    key = directory / "alice-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(nodes.ca_key), "-I", "bench", "-n", "alice", "-V", "+1h",
         f"{key}.pub"],
        check=True,
    )  # fmt: skip
    return [
        "-o", f"IdentityFile={key}", "-o", f"CertificateFile={key}-cert.pub",
        "-o", f"UserKnownHostsFile={nodes.known_hosts}", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
    ]  # fmt: skip


# The HTTP client is curl: a Python client would be the bottleneck, not the gateway.


def http_download(client: httpx.Client, machine: str, path: str) -> Callable[[], None]:
    url = f"{str(client.base_url).rstrip('/')}/api/file/{machine}{path}?view=read"
    token = client.headers["Authorization"]
    argv = ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", f"Authorization: {token}", url]
    return command(argv)


def http_upload(client: httpx.Client, machine: str, source: Path, path: str) -> Callable[[], None]:
    url = f"{str(client.base_url).rstrip('/')}/api/file/{machine}{path}"
    token = client.headers["Authorization"]
    argv = ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", f"Authorization: {token}"]
    return command([*argv, "-H", "Expect:", "-T", str(source), url])


def command(argv: list[str]) -> Callable[[], None]:
    return lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def sftp_batch(arguments: list[str], batch: str) -> Callable[[], None]:
    argv = ["sftp", "-q", "-b", "-", *arguments]
    return lambda: subprocess.run(argv, input=batch.encode(), check=True, stdout=subprocess.DEVNULL)


def transfers(
    gateway: Gateway, nodes: LoginNodes, directory: Path, size_mib: int
) -> list[tuple[str, str, float, float]]:
    """(direction, how, MB/s, RSS growth MiB) of every transfer."""
    work = Path(f"/home/alice/bench-files-{int(time.time())}")
    as_alice("mkdir", "-p", str(work))
    source = work / "source.bin"
    as_alice("dd", "if=/dev/urandom", f"of={source}", "bs=1M", f"count={size_mib}", "status=none")
    local_copy = directory / "upload.bin"  # the client side of uploads
    subprocess.run(["cp", str(source), str(local_copy)], check=True)
    local_copy.chmod(0o644)
    size = size_mib * MiB
    options = alice_certificate(nodes, directory)
    ssh = ["-P", str(nodes.ports[0]), *options]
    login = "alice@127.0.0.1"
    measured = Measured(gateway.process.pid if gateway.process else None)
    unmeasured = Measured(None)
    results = []
    headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=600) as client:
        http_download(client, "ssh", str(source))()  # warm up: pools, caches, certificate
        remote = f"{login}:{source}"
        cat_up = ["sh", "-c", 'cat "$1" > "$2"', "sh", str(local_copy), str(work / "cat.bin")]
        sftp_put = f"put {local_copy} {work}/sftp.bin\n"
        down, up, m, u = "download", "upload", measured, unmeasured
        cases: list[tuple[str, str, Callable[[], None], Measured]] = [
            (down, "local cat (as alice)", command([*ALICE, "cat", str(source)]), u),
            (down, "hpcgate, local runner", http_download(client, "local", str(source)), m),
            (down, "hpcgate, SSH (SFTP)", http_download(client, "ssh", str(source)), m),
            (down, "sftp get", command(["sftp", "-q", *ssh, remote, "/dev/null"]), u),
            (down, "scp", command(["scp", "-q", *ssh, remote, str(directory / "scp")]), u),
            (up, "local cat (as alice)", command([*ALICE, *cat_up]), u),
            (up, "hpcgate, local runner", http_upload(client, "local", local_copy, f"{work}/l"), m),
            (up, "hpcgate, SSH (SFTP)", http_upload(client, "ssh", local_copy, f"{work}/s"), m),
            (up, "sftp put", sftp_batch([*ssh, login], sftp_put), u),
            (up, "scp", command(["scp", "-q", *ssh, str(local_copy), f"{login}:{work}/scp"]), u),
        ]  # fmt: skip
        for direction, how, run, meter in cases:
            rate, growth = meter(run, size)
            results.append((direction, how, rate, growth))
            print(f"{direction:8} {how:24} {rate:8.0f} MB/s  RSS +{growth:.1f} MiB", flush=True)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return results


def output_delays(gateway: Gateway, machine: str, lines: int) -> list[float]:
    """Seconds from a line printed by a running job to the line seen by a follower."""
    headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
    script = f"#!/bin/bash\nfor i in $(seq 1 {lines}); do date +%s.%N; sleep 0.1; done\n"
    delays: list[float] = []
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=120) as client:
        answer = client.post(
            f"/api/job/{machine}", data={"jobscript": script, "jobfilepath": "~/bench/output.sh"}
        )
        jobid = answer.json()["output"]["jobid"]
        pending = ""
        with client.stream(
            "GET", f"/api/job/{machine}/{jobid}/output", headers={"Accept": "text/event-stream"}
        ) as events:
            for line in events.iter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.time()
                data = json.loads(line[6:])
                pending += data.get("data", "")
                *complete, pending = pending.split("\n")
                delays += [now - float(stamp) for stamp in complete if STAMP.match(stamp)]
    return delays


def robust_delays(gateway: Gateway, machine: str, lines: int) -> list[float]:
    """Output delays of a job that ran to its end (other people's test runs may cancel
    the bench user's jobs on a shared cluster: such a run is done again)."""
    for _ in range(3):
        delays = output_delays(gateway, machine, lines)
        if len(delays) == lines:
            return delays
    return delays


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(
    results: list[tuple[str, str, float, float]], delays: dict[str, list[float]], size_mib: int
) -> str:
    lines = [
        f"`python -m bench.files --size-mib {size_mib}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{describe_machine()}. One {size_mib} MiB file of random bytes (page cache), "
        "as alice; sftp/scp to the same login node (loopback sshd, sftp-server) with a "
        "certificate for alice. RSS: growth of the gateway's resident memory during the "
        "transfer (peak minus before).",
        "",
        "| direction | how | MB/s | vs sftp | gateway RSS growth (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    sftp = {d: rate for d, how, rate, _ in results if how.startswith("sftp")}
    for direction, how, rate, growth in results:
        served = "hpcgate" in how
        lines.append(
            f"| {direction} | {how} | {rate:,.0f} | {rate / sftp[direction]:.2f}x | "
            f"{f'{growth:.1f}' if served else '-'} |"
        )
    lines += [
        "",
        "Delay from a line printed by a running job to the line seen by a client following "
        "its output (Server-Sent Events; the gateway looks at the file every 0.25 s):",
        "",
        "| runner | lines | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|",
    ]
    for machine, values in delays.items():
        lines.append(
            f"| {machine} | {len(values)} | {statistics.median(values) * 1000:.0f} | "
            f"{percentile(values, 99) * 1000:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--lines", type=int, default=100, help="lines the output job prints")
    parser.add_argument("--write-readme", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    ensure_cluster()
    directory = Path(tempfile.mkdtemp(prefix="hpcgate-bench-files-"))
    directory.chmod(0o755)
    nodes = LoginNodes(directory, [free_port(), free_port()])
    nodes.start_all()
    try:
        with Gateway(config(nodes)) as gateway:
            results = transfers(gateway, nodes, directory, args.size_mib)
            delays = {m: robust_delays(gateway, m, args.lines) for m in ("local", "ssh")}
    finally:
        nodes.stop_all()
        subprocess.run(["rm", "-rf", str(directory)], check=False)
    text = report(results, delays, args.size_mib)
    print(text)
    if args.write_readme:
        write_section("files", text)


if __name__ == "__main__":
    main()
