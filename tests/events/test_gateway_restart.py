"""A gateway restarted while clients follow its events: they resume with Last-Event-ID
and miss nothing, with the embedded SQLite store and with Redis."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hpcgate.client import Client, GatewayError, NotLoggedIn
from hpcgate.client.events import Event
from tests.conftest import CANARY, PASSWORDS, Server, ok_output, start_server, stop_server, wait_for
from tests.events.conftest import events_config
from tests.events.test_restarts import (
    FINAL,
    accounting_final,
    last_id,
    redis_config,
    sbatch_as_alice,
)

JSON = {"Accept": "application/json"}


def start_again(server: Server) -> Server:
    """The same gateway (its config, its port) started again after ``stop_server``."""
    with server.log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(arg) for arg in server.process.args],  # type: ignore[union-attr]
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY_TEST_CANARY": CANARY},
        )
    again = Server(server.url, process, server.log_path, server.config_path)

    def answering() -> bool:
        if process.poll() is not None:
            pytest.fail(f"hpcgate serve exited:\n{again.log()}")
        try:
            return httpx.get(f"{again.url}/api/auth", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answering, timeout=30, what="the restarted gateway to answer")
    return again


class ClientFollower:
    """alice following her ln3 events with ``Client.events`` in a thread, from event
    ``after``; logs in again when a restart took her session with it."""

    def __init__(self, url: str, after: str | None) -> None:
        self.events: list[Event] = []
        self.logins = 0
        self.after = after
        self._stop = threading.Event()
        self._client = Client(url, retries=0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._client.login("alice", PASSWORDS["alice"])
                self.logins += 1
                for event in self._client.events("ln3", after=self.after):
                    self.events.append(event)
                    self.after = event.id
                    if self._stop.is_set():
                        return
            except (NotLoggedIn, GatewayError, httpx.HTTPError, RuntimeError):
                # down (being restarted) or the session went with it: log in again
                self._stop.wait(0.2)

    def of_job(self, jobid: str) -> list[str]:
        return [event.kind for event in list(self.events) if event.jobid == jobid]

    def close(self) -> None:
        self._stop.set()
        self._client.close()
        self.thread.join(timeout=10)


def stored_ids(client: httpx.Client, after: str | None) -> list[str]:
    """Every id of alice's ln3 events kept after ``after``, oldest first."""
    ids: list[str] = []
    while True:
        params = {"machine": "ln3", "after": after or "", "limit": "1000"}
        output = ok_output(client.get("/events", params=params, headers=JSON))
        if not output["events"]:
            return ids
        ids += [event["id"] for event in output["events"]]
        after = output["last_id"]


def ended(follower: ClientFollower, jobid: str) -> Callable[[], bool]:
    return lambda: any(kind in FINAL for kind in follower.of_job(jobid))


@pytest.fixture(params=["sqlite", "redis"])
def config_text(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return events_config(tmp_path / "state.sqlite")
    prefix: str = request.getfixturevalue("prefix")
    return redis_config(tmp_path, "redis://127.0.0.1:6379/0", prefix, monitor=True)


def test_clients_following_resume_after_a_gateway_restart_and_miss_nothing(
    cluster: None, tmp_path: Path, config_text: str
) -> None:
    server = start_server(config_text, tmp_path)
    follower: ClientFollower | None = None
    try:
        alice = server.login("alice")
        mark = last_id(alice)
        follower = ClientFollower(server.url, mark)
        wait_for(lambda: follower.logins, timeout=30, what="the follower to log in")
        script = {"jobscript": "#!/bin/bash\nsleep 300\n"}
        killed = str(ok_output(alice.post("/job/ln3", data=script))["jobid"])
        wait_for(
            lambda: {"running", *FINAL} & set(follower.of_job(killed)),
            timeout=60,
            what="the running event before the restart",
        )
        alice.close()
        stop_server(server)
        # while the gateway is down: one job is killed, another starts and ends
        subprocess.run(["scancel", killed], check=True)
        unseen = sbatch_as_alice("exit 4")
        wait_for(lambda: accounting_final(unseen), timeout=60, what="the unseen job's end")
        server = start_again(server)
        wait_for(ended(follower, killed), timeout=60, what="the killed job's end, resumed")
        wait_for(ended(follower, unseen), timeout=60, what="the unseen job's end, resumed")
        alice = server.login("alice")
        after = str(ok_output(alice.post("/job/ln3", data={"jobscript": "#!/bin/sh\n"}))["jobid"])
        wait_for(ended(follower, after), timeout=60, what="a new job's end after the restart")
        seen = [event.id for event in follower.events]
        kept = stored_ids(alice, mark)
        assert len(set(seen)) == len(seen), "an event was streamed twice"
        assert seen == kept[: len(seen)], "the stream missed or reordered kept events"
        assert follower.of_job(killed)[-1] == "cancelled"
        assert follower.of_job(unseen) == ["failed"]
        alice.close()
    finally:
        if follower is not None:
            follower.close()
        stop_server(server)
