"""Login throttling, cross-site defence, security headers and the audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, error_of, ok_output, settled, start_server, stop_server


@pytest.fixture(scope="module")
def audited(cluster: None, public_dir: Path) -> Iterator[tuple[Server, Path]]:
    """A gateway with an audit log."""
    log = public_dir / "audit.log"
    server = start_server(f'[audit]\nfile = "{log}"\n[machines.ln3]\n', public_dir)
    yield server, log
    stop_server(server)


@pytest.fixture
def strict(cluster: None, public_dir: Path) -> Iterator[Server]:
    """A gateway with a tight lockout."""
    server = start_server(
        "[auth]\nfailed_login_delay = 0\nmax_failures_per_user = 3\n"
        "max_failures_per_address = 6\nlockout_seconds = 60\n[machines.ln3]\n",
        public_dir,
    )
    yield server
    stop_server(server)


def test_repeated_failures_lock_the_user_out_then_the_address(strict: Server) -> None:
    with strict.client() as client:
        for _ in range(3):
            error_of(client.post("/auth", data={"username": "bob", "password": "no"}), 401)
        locked = client.post("/auth", data={"username": "bob", "password": "builder"})
        assert "too many failed logins for bob; try again in" in error_of(locked, 429)
        # other users from this address still may, until the address's own limit
        ok_output(client.post("/auth", data={"username": "alice", "password": "wonderland"}))
        for _ in range(3):
            error_of(client.post("/auth", data={"username": "alice", "password": "no"}), 401)
        refused = client.post("/auth", data={"username": "alice", "password": "wonderland"})
        assert "too many failed logins" in error_of(refused, 429)


def test_cookie_calls_that_change_things_must_come_from_the_gateway(server: Server) -> None:
    with server.client() as client:
        ok_output(client.post("/auth", data={"username": "alice", "password": "wonderland"}))
        evil = {"Origin": "https://evil.example"}
        refused = client.post("/command/ln3", data={"command": "true"}, headers=evil)
        assert "cross-site request refused" in error_of(refused, 403)
        referer = {"Referer": "https://evil.example/page"}
        error_of(client.post("/command/ln3", data={"command": "true"}, headers=referer), 403)
        same = {"Origin": server.url}
        ok_output(client.post("/command/ln3", data={"command": "true"}, headers=same))
        ok_output(client.post("/command/ln3", data={"command": "true"}))  # no browser headers
        ok_output(client.get("/job/ln3", headers=evil))  # reading is not changing
    with closing(server.login("alice")) as scripted:  # a bearer token is not a cookie
        ok_output(scripted.post("/command/ln3", data={"command": "true"}, headers=evil))


def test_security_headers(anonymous: httpx.Client) -> None:
    headers = anonymous.get("/job").headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    assert "default-src 'none'" in headers["content-security-policy"]
    # the docs page: Swagger UI from the package, its one inline script allowed by hash
    docs_csp = anonymous.get("/docs").headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in docs_csp and "frame-ancestors 'none'" in docs_csp


def test_the_audit_log_records_actions_and_no_secrets(audited: tuple[Server, Path]) -> None:
    server, log = audited
    with server.client() as client:
        login = client.post("/auth", data={"username": "alice", "password": "wonderland"})
        token = ok_output(login)["token"]
        client.headers["Authorization"] = f"Bearer {token}"
        jobid = ok_output(client.post("/job/ln3", data={"jobscript": "#!/bin/sh\nsleep 60\n"}))[
            "jobid"
        ]
        ok_output(client.delete("/job/ln3", params={"jobid": jobid}))
        error_of(settled(lambda: client.get("/job/ln3/987654321")), 404)
    text = log.read_text()
    assert token not in text and "wonderland" not in text
    entries = [json.loads(line) for line in text.splitlines()]
    submit = next(e for e in entries if e["method"] == "POST" and e["route"] == "/api/job/ln3")
    assert (submit["user"], submit["machine"], submit["jobid"], submit["outcome"]) == (
        "alice",
        "ln3",
        jobid,
        "ok",
    )
    assert submit["client"] == "127.0.0.1" and submit["time"].endswith("+00:00")
    kill = next(e for e in entries if e["method"] == "DELETE")
    assert kill["jobid"] == jobid and kill["status"] == 200
    missing = next(e for e in entries if e["route"] == "/api/job/ln3/987654321")
    assert (missing["jobid"], missing["status"], missing["outcome"]) == ("987654321", 404, "error")
    assert any(e["route"] == "/api/auth" and e["user"] == "alice" for e in entries)
