"""Gateways with job events: a one-second monitor, webhooks to loopback allowed, and a
state file of their own (so no other test's monitor shares their reported states)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server


def events_config(
    state: Path, *, extra: str = "", store: str = "", monitor: str = "", more: str = ""
) -> str:
    """A gateway of ln3 that probes every second, keeping its events in ``state``."""
    return f"""
[auth]
backend = "pam"
failed_login_delay = 0.05

[store]
path = "{state}"
{store}

[monitor]
account = "hpcmon"
interval = 1
{monitor}

[events]
heartbeat = 0.5
accounting_wait = 30

[webhooks]
allow = ["127.0.0.1/32"]
timeout = 3
retry_base = 0.2
retry_max = 1
max_attempts = 4
disable_after = 6

{more}

[machines.ln3]
description = "as deployed"
{extra}
"""


@pytest.fixture(scope="module")
def events_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("events")


@pytest.fixture(scope="module")
def gateway(cluster: None, events_dir: Path) -> Iterator[Server]:
    """One gateway with events, for the tests of a module."""
    running = start_server(events_config(events_dir / "state.sqlite"), events_dir)
    yield running
    stop_server(running)


class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it is sent; ``status`` is what it
    answers."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(
                        {"headers": dict(self.headers), "body": body, "path": self.path}
                    )
                    status = receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/{secrets.token_hex(4)}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(item["body"]) for item in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The README's receiver check of ``Hpcgate-Signature``."""
    fields = dict(part.split("=", 1) for part in headers["Hpcgate-Signature"].split(","))
    signed = fields["t"].encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


class Follower:
    """Follows ``GET /api/events`` as SSE in a thread, recording events and heartbeats."""

    def __init__(self, server: Server, token: str, *, last_id: str | None = None, **params: str):
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.heartbeats = 0
        self.closing: str | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        self._client = httpx.Client(base_url=f"{server.url}/api", timeout=30)
        self._request = (headers, params)
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.connected.wait(15), "the event stream did not open"

    def _run(self) -> None:
        headers, params = self._request
        try:
            with self._client.stream("GET", "/events", headers=headers, params=params) as answer:
                assert answer.status_code == 200, answer.read()
                self.connected.set()
                name, data, event_id = "", [], None
                for line in answer.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.heartbeats += 1
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line == "" and data:
                        if name == "dropped":
                            self.closing = data[0]
                        else:
                            self.events.append(json.loads("".join(data)))
                            self.ids.append(event_id or "")
                        name, data, event_id = "", [], None
        except BaseException as exc:  # recorded for the test to see
            if not self._stop.is_set():
                self.error = exc
        finally:
            self.connected.set()

    def of_job(self, jobid: str) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event["data"]["jobid"] == jobid]

    def close(self) -> None:
        self._stop.set()
        self._client.close()
