"""The serving floor: a bare ASGI app answering a fixed body, on the gateway's own server.

    .venv/bin/python -m bench.floor --port 9000 --body-file answer.json

Run as a process of its own by the benchmarks (:func:`serve_floor`): the same uvicorn,
protocol (``hpcgate.api.server``, with its deadlines and caps), event loop and logging as
``hpcgate serve`` with default settings, and an application that does nothing but send
the given bytes. What a gateway route costs beyond this is the gateway's own work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tests.conftest import free_port, wait_for

from hpcgate.api.observe import configure_logging
from hpcgate.api.server import ConnectionLimits, protocol_class, raise_descriptor_limit
from hpcgate.config import ServerConfig


def bare_app(body: bytes) -> object:
    """An ASGI app that answers every HTTP request with ``body`` as JSON."""
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    done = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        await send(start)  # type: ignore[operator]
        await send(done)  # type: ignore[operator]

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    args = parser.parse_args()
    server = ServerConfig(port=args.port)
    configure_logging(server)
    descriptors = raise_descriptor_limit()
    # the arguments of hpcgate.cli's uvicorn.run, for an app that does nothing
    uvicorn.run(
        bare_app(args.body_file.read_bytes()),  # type: ignore[arg-type]
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        log_config=None,
        http=protocol_class(ConnectionLimits.from_config(server, descriptors)),
        loop="asyncio",
    )


def _command(port: int) -> list[str]:
    return [sys.executable, "-m", "bench.floor", "--port", str(port)]


@contextmanager
def serve_floor(body: bytes) -> Iterator[str]:
    """A floor server answering ``body``, as a process; yields its URL."""
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-floor-"))
    (workdir / "body.json").write_bytes(body)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "floor.log").open("wb")
    process = subprocess.Popen(
        [*_command(port), "--body-file", str(workdir / "body.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def answering() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the floor server exited: {(workdir / 'floor.log').read_text()}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(answering, timeout=30, what="the floor server to answer")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


if __name__ == "__main__":
    main()
