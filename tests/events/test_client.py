"""The Python client and the CLI on job events: Client.events resumes, wait() uses the
stream, ``hpcgate watch`` prints one JSON line per event."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from hpcgate.client import Client
from tests.conftest import PASSWORDS, Server


def test_events_wait_and_watch(gateway: Server, tmp_path: object) -> None:
    with Client(gateway.url) as client:
        client.login("alice", PASSWORDS["alice"])
        for _ in range(3):  # other tests on this cluster may cancel alice's jobs
            jobid = client.submit("ln3", script="#!/bin/bash\nsleep 1\nexit 5\n", name="cli")
            job = client.wait("ln3", jobid, timeout=90)
            if job.state == "Failed":
                break
        assert job.state == "Failed" and job.exit_code.startswith("5")
        seen = []
        for event in client.events("ln3", jobid, after="0"):
            seen.append(event)
            if event.final:
                break
        assert seen[0].kind == "pending" and seen[-1].kind == "failed"
        assert seen[-1].exit_code == 5
        resumed = next(iter(client.events("ln3", jobid, after=seen[0].id)))
        assert resumed.id == seen[1].id
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "HPCGATE_URL": gateway.url}
        login = subprocess.run(
            [sys.executable, "-m", "hpcgate", "login", "alice"],
            input="wonderland\n",
            env=env,
            capture_output=True,
            text=True,
        )
        assert login.returncode == 0, login.stderr
        watch = subprocess.run(
            [sys.executable, "-m", "hpcgate", "watch", "ln3", jobid, "--json", "--after", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert watch.returncode == 0, watch.stderr
        lines = [json.loads(line) for line in watch.stdout.splitlines()]
        assert [line["id"] for line in lines] == [event.id for event in seen]


def test_wait_polls_a_gateway_without_job_events() -> None:
    """An older gateway answers 404 for /api/events: wait() falls back to polling the job."""
    asked: list[str] = []

    def older_gateway(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == "/api/events":
            envelope = {"status": "ERROR", "output": None, "status_code": 404}
            return httpx.Response(404, json=envelope | {"error": "no such route"})
        state = "Completed" if asked.count(request.url.path) >= 3 else "Running"
        columns = {"status": {"42": state}, "id": {"42": "42"}, "exitcode": {"42": "0:0"}}
        return httpx.Response(
            200, json={"status": "OK", "output": columns, "status_code": 200, "error": ""}
        )

    with Client("http://older.example", transport=httpx.MockTransport(older_gateway)) as gw:
        job = gw.wait("ln3", "42", timeout=30)
    assert job.state == "Completed"
    assert asked.count("/api/events") == 1, asked
    assert asked.count("/api/job/ln3/42") == 3, asked


def test_wait_follows_the_event_stream_of_a_gateway_that_has_one() -> None:
    """wait() reads the job's events as SSE from the oldest kept, and looks at the job
    again when the final one comes."""
    asked: list[httpx.Request] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        if request.url.path == "/api/events":
            cloud = {"id": "7", "type": "org.hpcgate.job.completed", "data": {"jobid": "42"}}
            body = f": keep-alive\n\nid: 7\ndata: {json.dumps(cloud)}\n\n"
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        streamed = any(earlier.url.path == "/api/events" for earlier in asked)
        columns = {"status": {"42": "Completed" if streamed else "Running"}, "id": {"42": "42"}}
        return httpx.Response(
            200, json={"status": "OK", "output": columns, "status_code": 200, "error": ""}
        )

    with Client("http://gateway.example", transport=httpx.MockTransport(gateway)) as gw:
        job = gw.wait("ln3", "42", timeout=30)
    assert job.state == "Completed"
    streams = [request for request in asked if request.url.path == "/api/events"]
    assert len(streams) == 1 and len(asked) == 3
    assert streams[0].headers["accept"] == "text/event-stream"
    assert streams[0].headers["last-event-id"] == "0"
    assert streams[0].url.params["jobid"] == "42"
