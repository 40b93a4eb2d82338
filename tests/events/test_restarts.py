"""Faults: a monitor restarted mid-job, jobs that start and end while nobody looks, a
shared Redis store with two gateway processes, Redis going down and coming back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server, ok_output, start_server, stop_server, wait_for
from tests.events.conftest import Follower, Receiver, events_config
from tests.redis_server import PrivateRedis

JSON = {"Accept": "application/json"}
FINAL = ("failed", "completed", "cancelled", "timeout", "ended")


def kinds_of(client: httpx.Client, jobid: str, after: str | None = None) -> list[str]:
    params = {"jobid": jobid} | ({"after": after} if after else {})
    output = ok_output(client.get("/events", params=params, headers=JSON))
    return [event["type"].rsplit(".", 1)[1] for event in output["events"]]


def last_id(client: httpx.Client) -> str | None:
    after = None
    while True:
        output = ok_output(client.get("/events", params={"after": after or ""}, headers=JSON))
        if not output["events"]:
            return after
        after = output["last_id"]


def sbatch_as_alice(script: str) -> str:
    done = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", f"--wrap={script}"],
        cwd="/tmp",
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().split(";")[0]


def accounting_final(jobid: str) -> bool:
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", jobid, "--format=State,Partition"],
        capture_output=True,
        text=True,
    )
    state, _, partition = done.stdout.strip().partition("|")
    return bool(partition) and state.split(" ")[0] in ("FAILED", "COMPLETED", "CANCELLED")


def test_a_restarted_monitor_replays_nothing_and_reports_what_ended_meanwhile(
    cluster: None, tmp_path: Path
) -> None:
    config = events_config(tmp_path / "state.sqlite")
    first = start_server(config, tmp_path)
    try:
        alice = first.login("alice")
        for _ in range(3):  # other tests on this cluster may cancel alice's jobs
            script = {"jobscript": "#!/bin/bash\nsleep 300\n"}
            running = str(ok_output(alice.post("/job/ln3", data=script))["jobid"])
            seen = wait_for(
                lambda: {"running", *FINAL} & set(kinds_of(alice, running)),  # noqa: B023
                timeout=60,
                what="running",
            )
            if seen == {"running"}:
                break
        alice.close()
    finally:
        stop_server(first)
    # while no monitor looks: one job is killed, another starts and ends
    subprocess.run(["scancel", running], check=True)
    unseen = sbatch_as_alice("exit 4")
    wait_for(lambda: accounting_final(unseen), timeout=60, what="accounting of the unseen job")
    second = start_server(config, tmp_path)
    try:
        alice = second.login("alice")
        wait_for(
            lambda: any(kind in FINAL for kind in kinds_of(alice, running)),
            timeout=60,
            what="the killed job's final event",
        )
        killed = kinds_of(alice, running)
        assert killed.count("pending") == 1 and killed.count("running") == 1, killed
        assert killed[-1] == "cancelled", killed
        wait_for(lambda: kinds_of(alice, unseen), timeout=60, what="the unseen job's event")
        assert kinds_of(alice, unseen) == ["failed"]
        alice.close()
    finally:
        stop_server(second)


def redis_config(tmp_path: Path, url: str, prefix: str, *, monitor: bool) -> str:
    store = f'backend = "redis"\nredis_url = "{url}"\nprefix = "{prefix}"'
    return events_config(
        tmp_path / "unused.sqlite", store=store, monitor=f"embedded = {str(monitor).lower()}"
    )


def test_two_gateways_on_redis_serve_the_same_events_and_deliver_each_once(
    cluster: None, tmp_path: Path, prefix: str
) -> None:
    url = "redis://127.0.0.1:6379/0"
    probing = start_server(redis_config(tmp_path, url, prefix, monitor=True), tmp_path)
    serving = start_server(redis_config(tmp_path, url, prefix, monitor=False), tmp_path)
    receiver = Receiver()
    try:
        alice = serving.login("alice")
        token = alice.headers["Authorization"].removeprefix("Bearer ")
        follower = Follower(serving, token)
        created = ok_output(
            alice.post("/subscriptions", json={"url": receiver.url, "types": ",".join(FINAL)})
        )
        jobid = str(
            ok_output(probing.login("alice").post("/job/ln3", data={"jobscript": "#!/bin/sh\n"}))[
                "jobid"
            ]
        )
        wait_for(
            lambda: any(e["type"].split(".")[-1] in FINAL for e in follower.of_job(jobid)),
            timeout=60,
            what="the event on the other gateway",
        )
        wait_for(  # alice's jobs of other tests end too
            lambda: [e for e in receiver.events() if e["data"]["jobid"] == jobid],
            timeout=30,
            what="the webhook",
        )
        ended = [e for e in receiver.events() if e["data"]["jobid"] == jobid]
        assert len(ended) == 1, "delivered once though two processes deliver"

        def logged() -> list[str]:  # the receiver may hear it before the log is written
            log = ok_output(alice.get(f"/subscriptions/{created['id']}/deliveries"))
            return [entry["outcome"] for entry in log if entry["subject"] == f"ln3/{jobid}"]

        assert wait_for(logged, timeout=10, what="the delivery in the log") == ["delivered"]
        follower.close()
        alice.close()
    finally:
        receiver.close()
        stop_server(probing)
        stop_server(serving)


def test_a_stream_on_redis_goes_on_after_redis_comes_back(
    cluster: None, tmp_path: Path, private_redis: PrivateRedis
) -> None:
    server: Server = start_server(
        redis_config(tmp_path, private_redis.url, "ev:", monitor=True), tmp_path
    )
    try:
        alice = server.login("alice")
        token = alice.headers["Authorization"].removeprefix("Bearer ")
        follower = Follower(server, token)
        private_redis.stop()
        failed = alice.get("/job/ln3/1")
        assert failed.status_code == 503
        private_redis.start()
        alice = server.login("alice")  # the sessions went with Redis
        answer: dict[str, Any] = {}

        def submitted() -> bool:
            response = alice.post("/job/ln3", data={"jobscript": "#!/bin/sh\n"})
            answer.update(response.json())
            return response.status_code == 200

        wait_for(submitted, timeout=30, what="a submit after Redis came back")
        jobid = answer["output"]["jobid"]
        wait_for(
            lambda: any(e["type"].split(".")[-1] in FINAL for e in follower.of_job(jobid)),
            timeout=60,
            what="the new job's events on the stream opened before Redis went down",
        )
        assert follower.error is None
        follower.close()
        alice.close()
    finally:
        stop_server(server)
