"""The shipped nginx site (deploy/nginx/hpcgate.conf), run by Debian's nginx in front of a
real gateway: TLS, HTTP/2, the client's own address in the audit log, uploads streamed to
the gateway, event and output streams never buffered."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcgate.config import LimitsConfig
from tests.conftest import (
    PASSWORDS,
    Server,
    error_of,
    ok_output,
    start_server,
    stop_server,
    wait_for,
)
from tests.deploy.conftest import SITE, Certificate, Nginx, need, start_nginx, stop_nginx

CLIENT_ADDRESS = "127.0.0.2"  # not nginx's 127.0.0.1: the audit log must tell them apart


@dataclass
class Proxied:
    gateway: Server
    nginx: Nginx
    audit_log: Path
    certificate: Certificate

    def client(self, **kwargs: Any) -> httpx.Client:
        """A client of the site from ``CLIENT_ADDRESS``, trusting the test certificate."""
        transport = httpx.HTTPTransport(
            local_address=CLIENT_ADDRESS, verify=self.certificate.trusted()
        )
        return httpx.Client(
            base_url=f"{self.nginx.url}/api", transport=transport, timeout=90, **kwargs
        )

    def audit(self) -> list[dict[str, Any]]:
        lines = self.audit_log.read_text().splitlines() if self.audit_log.exists() else []
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def proxied(
    cluster: None,
    public_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    certificate: Certificate,
) -> Iterator[Proxied]:
    """A gateway that trusts only nginx (127.0.0.1) for forwarded addresses, behind it."""
    audit_log = public_dir / "nginx-audit.log"
    gateway = start_server(
        f"""
[server]
forwarded_allow_ips = "127.0.0.1"

[audit]
file = "{audit_log}"

[auth]
failed_login_delay = 0.05

[monitor]
account = "hpcmon"

[machines.ln3]
""",
        public_dir,
    )
    upstream = gateway.url.removeprefix("http://")
    nginx = start_nginx(tmp_path_factory.mktemp("nginx"), upstream, certificate)
    yield Proxied(gateway, nginx, audit_log, certificate)
    stop_nginx(nginx)
    stop_server(gateway)


def test_login_command_submit_queue_and_status_work_through_nginx(proxied: Proxied) -> None:
    with proxied.client() as client:
        login = client.post("/auth", data={"username": "alice", "password": PASSWORDS["alice"]})
        token = ok_output(login)["token"]
        client.headers["Authorization"] = f"Bearer {token}"
        ran = ok_output(client.post("/command/ln3", data={"command": "id -un"}))
        assert ran["output"] == "alice\n"
        jobid = ok_output(
            client.post(
                "/job/ln3/",
                data={
                    "jobscript": "#!/bin/bash\nsleep 60\n",
                    "jobconf": json.dumps({"job_name": "through-nginx", "time_limit": 2}),
                },
            )
        )["jobid"]
        try:
            queue = ok_output(client.get("/job/ln3/"))
            assert queue["name"][jobid] == "through-nginx"
        finally:
            ok_output(client.delete(f"/job/ln3/{jobid}"))
        assert "ln3" in ok_output(client.get("/job"))

    entries = [entry for entry in proxied.audit() if entry["user"] == "alice"]
    routes = {entry["route"] for entry in entries}
    assert {"/api/auth", "/api/command/ln3", "/api/job/ln3/", f"/api/job/ln3/{jobid}"} <= routes
    # the client's own address, as nginx saw it, never nginx's
    assert {entry["client"] for entry in entries} == {CLIENT_ADDRESS}


def test_a_browser_call_with_its_own_origin_passes_the_proxy(proxied: Proxied) -> None:
    """The gateway compares Origin with Host: nginx must pass the Host the browser sent,
    port included."""
    with proxied.client() as browser:
        ok_output(browser.post("/auth", data={"username": "bob", "password": PASSWORDS["bob"]}))
        same_site = {"Origin": proxied.nginx.url}
        answer = browser.post("/command/ln3", data={"command": "true"}, headers=same_site)
        ok_output(answer)
        other_site = {"Origin": "https://evil.example"}
        refused = browser.post("/command/ln3", data={"command": "true"}, headers=other_site)
        assert "cross-site request refused" in error_of(refused, 403)


def test_the_site_speaks_http2_over_tls_and_redirects_plain_http(proxied: Proxied) -> None:
    need("curl")
    version = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "--cacert",
            str(proxied.certificate.certificate),
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            f"{proxied.nginx.url}/api/auth",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version == "2 200"
    plain = httpx.get(f"{proxied.nginx.http_url}/api/auth", follow_redirects=False)
    assert plain.status_code == 301
    assert plain.headers["location"].startswith("https://")


def test_an_upload_reaches_the_gateway_while_it_is_still_being_sent(proxied: Proxied) -> None:
    """Under /api/file/ nginx passes the body on as it arrives: the gateway has answered
    (and audited) the request before the client has sent the half of it."""
    route = "/api/file/ln3/streamed-upload"
    size = 2 * 1024 * 1024  # below server.max_body_bytes: the gateway itself answers
    context = proxied.certificate.trusted()
    host, port = proxied.nginx.url.removeprefix("https://").split(":")
    raw = socket.create_connection((host, int(port)), source_address=(CLIENT_ADDRESS, 0))
    with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(
            f"POST {route} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        tls.sendall(b"x" * (size // 8))

        def gateway_saw_it() -> bool:
            return any(entry["route"] == route for entry in proxied.audit())

        wait_for(gateway_saw_it, timeout=20, what="the gateway to see the upload")
        with contextlib.suppress(OSError):  # the gateway may already have closed its side
            tls.sendall(b"x" * (size - size // 8))
        tls.settimeout(30)
        assert tls.recv(64).startswith(b"HTTP/1.1 ")
    entry = next(entry for entry in proxied.audit() if entry["route"] == route)
    assert entry["client"] == CLIENT_ADDRESS


def test_nginx_waits_longer_than_the_gateway_lets_a_call_take() -> None:
    """The gateway's own 504 (command) and 503 (scheduler) must come before nginx's."""
    site = SITE.read_text()
    server_level = re.findall(r"^    proxy_read_timeout (\d+)s;", site, flags=re.MULTILINE)
    assert len(server_level) == 1
    limits = LimitsConfig()
    assert int(server_level[0]) > max(limits.timeout, limits.scheduler_timeout)


class _StreamingUpstream(BaseHTTPRequestHandler):
    """Sends one event, then waits for the test to say the client has it, then another."""

    released: threading.Event
    finished: threading.Event

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(b"data: one\n\n")
        self.wfile.flush()
        self.released.wait(timeout=20)
        self.finished.set()
        self.wfile.write(b"data: two\n\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def streaming_site(tmp_path: Path, certificate: Certificate) -> Iterator[tuple[Nginx, type]]:
    """nginx with the shipped site in front of an upstream that streams slowly."""
    handler = type(
        "Handler",
        (_StreamingUpstream,),
        {"released": threading.Event(), "finished": threading.Event()},
    )
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    nginx = start_nginx(tmp_path / "nginx", f"127.0.0.1:{upstream.server_address[1]}", certificate)
    yield nginx, handler
    handler.released.set()
    stop_nginx(nginx)
    upstream.shutdown()
    upstream.server_close()


@pytest.mark.parametrize("path", ["/api/events", "/api/job/ln3/4816214/output"])
def test_event_and_output_streams_reach_the_client_as_they_are_written(
    streaming_site: tuple[Nginx, type[_StreamingUpstream]], certificate: Certificate, path: str
) -> None:
    nginx, upstream = streaming_site
    events = []
    with (
        httpx.Client(verify=certificate.trusted(), timeout=60) as client,
        client.stream("GET", f"{nginx.url}{path}") as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            if not events:
                # the first event came while the upstream was still holding the stream
                assert not upstream.finished.is_set(), "nginx held the stream back"
                upstream.released.set()
            events.append(line)
    assert events == ["data: one", "data: two"]
