"""Shared pieces of the benchmarks: a gateway process, slurmctld RPC counts, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.conftest import PASSWORDS, Server, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]


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
    """Latencies (seconds) and errors of one measured run, and how long it took."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    """Wall time from the first request sent to the last answer read."""

    @property
    def rate(self) -> float:
        """Requests completed per second of the run."""
        return len(self.latencies) / self.elapsed if self.elapsed else float("nan")

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


class Gateway:
    """A real ``hpcgate serve`` on a free port with the given config; a context manager.

    Started and stopped exactly as the test suite does it (``tests.conftest``).
    """

    def __init__(self, config_text: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="hpcgate-bench-"))
        self.config_text = config_text
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.server.process if self.server else None

    def __enter__(self) -> Gateway:
        self.server = start_server(self.config_text, self.workdir)
        return self

    def token(self, user: str) -> str:
        answer = httpx.post(
            f"{self.url}/api/auth", data={"username": user, "password": PASSWORDS[user]}
        )
        answer.raise_for_status()
        token: str = answer.json()["output"]["token"]
        return token

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            stop_server(self.server)


def describe_machine() -> str:
    """One line on what the figures were measured on: cores, memory, kernel, Slurm."""
    cores = os.cpu_count()
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])  # MemTotal comes first
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{cores} cores, {memory_kib / 2**20:.0f} GiB, Linux {platform.release()}, "
        f"{slurm or 'Slurm ?'}, Python {platform.python_version()}"
    )


def write_section(name: str, text: str, readme: Path = REPO / "bench" / "README.md") -> None:
    """Replace the generated section ``name`` of the benchmarks' README with ``text``."""
    begin, end = f"<!-- {name}:begin (generated) -->", f"<!-- {name}:end -->"
    current = readme.read_text()
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    readme.write_text(current)


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
        try:
            return await self._exchange(method, path, body, content_type)
        except (OSError, asyncio.IncompleteReadError):
            await self.close()  # the next request reconnects, as a real client would
            raise

    async def _exchange(
        self, method: str, path: str, body: bytes, content_type: str
    ) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
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
            writer, self.writer = self.writer, None
            writer.close()
            with contextlib.suppress(OSError):  # reset by the server: closed all the same
                await writer.wait_closed()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)
