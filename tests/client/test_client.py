"""The Python client against a real gateway process on the real cluster."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from hpcgate.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    NotLoggedIn,
    Unavailable,
    WaitTimedOut,
    calls,
)
from tests.conftest import PASSWORDS, Server, free_port, wait_for


@pytest.fixture
def alice(server: Server) -> Client:
    client = Client(server.url)
    client.login("alice", PASSWORDS["alice"])
    return client


def test_a_jobs_whole_life(alice: Client) -> None:
    jobid = alice.submit("ln3", script="#!/bin/bash\necho out\nexit 0\n", name="life", time=5)
    assert jobid in [job.id for job in alice.queue("ln3")]
    job = alice.wait("ln3", jobid, timeout=120)
    assert job.finished and job.succeeded and job.state == "Completed"
    assert (job.name, job.partition, job.exit_code, job.return_code) == ("life", "work", "0:0", 0)
    # accounting may record a job's end a moment before its steps'
    wait_for(
        lambda: f"{jobid}.batch" in [step.id for step in alice.job("ln3", jobid).steps],
        timeout=30,
        what="the batch step in the detail",
    )
    assert alice.whoami() == "alice"


def test_wait_on_a_failing_job(alice: Client) -> None:
    jobid = alice.submit("ln3", script="#!/bin/bash\nexit 7\n")
    job = alice.wait("ln3", jobid, timeout=120)
    assert job.state == "Failed" and not job.succeeded and job.return_code == 7


def test_wait_gives_up_without_touching_the_job(alice: Client) -> None:
    jobid = alice.submit("ln3", script="#!/bin/bash\nsleep 300\n")
    with pytest.raises(WaitTimedOut, match=f"job {jobid} on ln3 did not finish within 1 s"):
        alice.wait("ln3", jobid, timeout=1)
    assert not alice.job("ln3", jobid).finished
    alice.cancel("ln3", jobid)
    assert alice.wait("ln3", jobid, timeout=60).state == "Cancelled"
    with pytest.raises(Conflict, match="already finished"):
        alice.cancel("ln3", jobid)


def test_run_a_command(alice: Client) -> None:
    result = alice.run("ln3", "ls /root")
    assert result.retcode == 2 and "Permission denied" in result.error


def test_a_remote_script_and_options(alice: Client) -> None:
    alice.run("ln3", "printf '#!/bin/sh\\necho \"$@\"\\n' > ~/remote.sh")
    jobid = alice.submit("ln3", remote_file="~/remote.sh", args="a b", partition="debug", nodes=1)
    assert alice.wait("ln3", jobid, timeout=120).partition == "debug"


def test_errors_are_the_documented_classes(server: Server, alice: Client) -> None:
    with Client(server.url) as anonymous:
        with pytest.raises(NotLoggedIn, match="wrong username or password"):
            anonymous.login("alice", "nope")
        with pytest.raises(NotLoggedIn):
            anonymous.queue("ln3")
    with pytest.raises(NotFound, match="unknown machine 'nosuch'"):
        alice.queue("nosuch")
    with pytest.raises(BadRequest, match="time_limit must be between 1"):
        alice.submit("ln3", script="#!/bin/sh\n", time=0)
    with pytest.raises(BadRequest, match="Invalid partition name"):
        alice.submit("ln3", script="#!/bin/sh\n", partition="nosuch")
    bob = Client(server.url)
    bob.login("bob", PASSWORDS["bob"])
    jobid = alice.submit("ln3", script="#!/bin/bash\nsleep 300\n")
    with pytest.raises(Forbidden, match="another user"):
        bob.job("ln3", jobid)
    alice.cancel("ln3", jobid)


def test_unknown_options_fail_before_sending() -> None:
    with pytest.raises(TypeError, match="unknown job option 'colour'"):
        calls.submit("ln3", script="#!/bin/sh\n", options={"colour": "red"})
    with pytest.raises(TypeError, match=r"either script= .* or remote_file="):
        calls.submit("ln3", options={})


def test_a_dead_gateway_is_connection_failed_after_retries() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", retries=1) as client,
        pytest.raises(ConnectionFailed, match="cannot reach"),
    ):
        client.status()


def test_reads_and_keyed_submits_are_retried_kills_are_not() -> None:
    seen: list[httpx.Request] = []
    fail_next = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if fail_next[0] or request.method == "DELETE":
            fail_next[0] = False
            body = {"status": "ERROR", "output": "", "status_code": 503, "error": "busy"}
            return httpx.Response(503, json=body)
        output = {"jobid": "7"} if request.method == "POST" else {}
        return httpx.Response(
            200, json={"status": "OK", "output": output, "status_code": 200, "error": ""}
        )

    with Client("http://gateway.test", transport=httpx.MockTransport(handler), retries=2) as client:
        assert client.status() == []
        assert [r.method for r in seen] == ["GET", "GET"]
        seen.clear()
        fail_next[0] = True
        assert client.submit("ln3", script="#!/bin/sh\n") == "7"
        keys = {r.headers.get("idempotency-key") for r in seen}
        assert len(seen) == 2 and len(keys) == 1 and None not in keys, "one key, resent"
        seen.clear()
        with pytest.raises(Unavailable, match="busy"):
            client.cancel("ln3", "7")
        assert [r.method for r in seen] == ["DELETE"], "a kill is never sent twice"


def test_async_client(server: Server, public_dir: Path) -> None:
    # the job cannot end before the test has seen it listed: it waits for this file
    go = public_dir / f"go-{secrets.token_hex(4)}"
    script = f"#!/bin/bash\nuntil [ -e {go} ]; do sleep 0.1; done\n"

    async def body() -> None:
        async with AsyncClient(server.url) as client:
            await client.login("bob", PASSWORDS["bob"])
            jobid = await client.submit("ln3", script=script, name="async")
            try:
                listed, machines = await asyncio.gather(client.queue("ln3"), client.status())
            finally:
                go.touch()
            assert "ln3" in [m.name for m in machines]
            assert [j.state for j in listed if j.id == jobid] in (["Pending"], ["Running"])
            job = await client.wait("ln3", jobid, timeout=120)
            assert job.succeeded and job.name == "async"
            await client.logout()
            with pytest.raises(NotLoggedIn):
                await client.queue("ln3")

    asyncio.run(body())


def test_a_keyed_submit_cut_in_doubt_is_sent_again_with_its_key() -> None:
    """504 on a keyed submit: the gateway cut the attempt and the job may exist; the same
    key resent returns it (or submits once)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            body = {"status": "ERROR", "output": "", "status_code": 504, "error": "cut"}
            return httpx.Response(504, json=body)
        return httpx.Response(
            200, json={"status": "OK", "output": {"jobid": "7"}, "status_code": 200, "error": ""}
        )

    with Client("http://gateway.test", transport=httpx.MockTransport(handler), retries=2) as client:
        assert client.submit("ln3", script="#!/bin/sh\n") == "7"
    assert len({r.headers.get("idempotency-key") for r in seen}) == 1 and len(seen) == 2
