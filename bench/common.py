"""Shared pieces of the benchmarks: a gateway process, slurmctld RPC counts, statistics."""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


def slurmctld_rpcs(reset: bool = False) -> int:
    """RPCs slurmctld has served since the last reset (sdiag, by message type)."""
    if reset:
        subprocess.run(["sdiag", "--reset"], check=True, capture_output=True)
        return 0
    text = subprocess.run(["sdiag"], check=True, capture_output=True, text=True).stdout
    section = text.split("by message type", 1)[1].split("by user", 1)[0]
    return sum(int(n) for n in re.findall(r"count:\s*(\d+)", section))


@dataclass
class Samples:
    """Latencies (seconds) and errors of one measured run."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


class Gateway:
    """A real ``hpcgate serve`` on a free port with the given config; a context manager."""

    def __init__(self, config_text: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="hpcgate-bench-"))
        self.config_text = config_text
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Gateway:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = self.workdir / "bench.toml"
        config.write_text(self.config_text)
        log = (self.workdir / "gateway.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcgate",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/auth", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"the gateway did not start; see {self.workdir}/gateway.log")

    def token(self, user: str) -> str:
        answer = httpx.post(
            f"{self.url}/api/auth", data={"username": user, "password": PASSWORDS[user]}
        )
        answer.raise_for_status()
        token: str = answer.json()["output"]["token"]
        return token

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def ensure_cluster() -> None:
    subprocess.run([str(REPO / "scripts" / "cluster"), "up"], check=True)


class RawConnection:
    """One keep-alive HTTP/1.1 connection speaking just enough for GETs.

    httpx's async pool tops out near 150 req/s at 64 connections on these machines, which
    would measure the load generator, not the gateway; this does several thousand.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        """GET ``path``; returns the HTTP status (the body is read and dropped)."""
        return (await self.request("GET", path))[0]

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = ""
    ) -> tuple[int, bytes]:
        """One request on the kept-alive connection; returns the status and the body."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head_lines = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
        if body or method == "POST":
            head_lines += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head_lines.encode() + b"\r\n" + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length is None:
            raise RuntimeError("response without Content-Length")
        return status, await self.reader.readexactly(int(length.group(1)))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
            self.writer = None


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)
