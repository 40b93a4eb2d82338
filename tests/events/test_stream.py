"""Job events from the monitors' snapshots, streamed to their owner (real cluster, real
gateway): order, ownership, resuming, heartbeats, the JSON long poll, kept final records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, ok_output, start_server, stop_server, wait_for
from tests.events.conftest import Follower, events_config

SCRIPT = "#!/bin/bash\nsleep 2\nexit 3\n"


@pytest.fixture
def alice(gateway: Server) -> Iterator[httpx.Client]:
    client = gateway.login("alice")
    yield client
    client.close()


def token(client: httpx.Client) -> str:
    return str(client.headers["Authorization"].removeprefix("Bearer "))


def submit(client: httpx.Client, script: str = SCRIPT, name: str = "events") -> str:
    answer = client.post(
        "/job/ln3", data={"jobscript": script, "jobconf": f'{{"job_name": "{name}"}}'}
    )
    return str(ok_output(answer)["jobid"])


def run_to_end(client: httpx.Client, follower: Follower, kind: str = "failed") -> str:
    """Submit SCRIPT until one run ends as ``kind`` (other tests on this cluster may cancel
    alice's jobs); its job id."""
    for _ in range(3):
        jobid = submit(client)
        final = wait_for(
            lambda jobid=jobid: [  # type: ignore[misc]
                e for e in follower.of_job(jobid) if e["type"].rsplit(".", 1)[1] in FINAL
            ],
            timeout=60,
            what=f"the final event of job {jobid}",
        )
        if final[0]["type"].endswith(f".{kind}"):
            return jobid
    pytest.fail("three jobs in a row were cancelled by someone else")


FINAL = {"failed", "completed", "cancelled", "timeout", "ended"}


def test_a_jobs_life_reaches_its_owner_in_order_and_nobody_else(
    gateway: Server, alice: httpx.Client
) -> None:
    bob = gateway.login("bob")
    mine = Follower(gateway, token(alice), machine="ln3")
    theirs = Follower(gateway, token(bob))
    try:
        jobid = run_to_end(alice, mine)  # a job that ran to its own end
        events = mine.of_job(jobid)
        kinds = [event["type"].rsplit(".", 1)[1] for event in events]
        assert kinds[0] == "pending" and kinds[-1] == "failed", kinds
        assert "running" in kinds, kinds
        assert len(kinds) == len(set(kinds)), f"an event was sent twice: {kinds}"
        final = events[-1]
        assert final["specversion"] == "1.0"
        assert final["subject"] == f"ln3/{jobid}"
        assert final["data"]["exit_code"] == 3 and final["data"]["user"] == "alice"
        assert final["data"]["state"] == "FAILED"
        assert final["data"]["name"] == "events"
        ids = [event["id"] for event in events]
        order = [tuple(int(part) for part in i.split("-")) for i in ids]
        assert order == sorted(order)
        assert not theirs.of_job(jobid), "bob saw alice's job"
        assert mine.error is None and theirs.error is None
    finally:
        mine.close()
        theirs.close()
        bob.close()


def test_a_stream_resumes_after_its_last_event_id_and_misses_nothing(
    gateway: Server, alice: httpx.Client
) -> None:
    first = Follower(gateway, token(alice))
    try:
        jobid = run_to_end(alice, first)
        whole = first.of_job(jobid)
        ids = [first.ids[first.events.index(event)] for event in whole]
    finally:
        first.close()
    resumed = Follower(gateway, token(alice), last_id=ids[0], jobid=jobid)
    try:
        wait_for(lambda: len(resumed.events) >= len(whole) - 1, timeout=10, what="the backlog")
        assert resumed.ids == ids[1:]
        assert resumed.events == whole[1:]
    finally:
        resumed.close()
    # ?after= works the same, and heartbeats flow while nothing happens
    quiet = Follower(gateway, token(alice), after=ids[-1], jobid=jobid)
    try:
        wait_for(lambda: quiet.heartbeats >= 2, timeout=10, what="heartbeats")
        assert quiet.events == []
    finally:
        quiet.close()


def test_the_json_long_poll_answers_when_the_next_event_comes(
    gateway: Server, alice: httpx.Client
) -> None:
    jobid = submit(alice, "#!/bin/bash\nsleep 300\n")
    json_headers = {"Accept": "application/json"}
    first = ok_output(alice.get("/events", params={"jobid": jobid}, headers=json_headers))
    assert first["events"][0]["type"] == "org.hpcgate.job.pending"
    after = first["last_id"]
    with httpx.Client(base_url=f"{gateway.url}/api", timeout=60) as poller:
        poller.headers["Authorization"] = alice.headers["Authorization"]
        import threading

        answers: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: answers.append(
                poller.get(
                    "/events",
                    params={"jobid": jobid, "after": after, "wait": "40", "type": "cancelled"},
                    headers=json_headers,
                )
            )
        )
        thread.start()
        ok_output(alice.delete(f"/job/ln3/{jobid}"))
        thread.join(50)
    output = ok_output(answers[0])
    assert [event["type"] for event in output["events"]] == ["org.hpcgate.job.cancelled"]
    assert output["last_id"] == output["events"][0]["id"]


def test_an_ended_job_is_answered_from_the_kept_record(
    gateway: Server, alice: httpx.Client, events_dir: Path
) -> None:
    follower = Follower(gateway, token(alice))
    try:
        jobid = run_to_end(alice, follower)
    finally:
        follower.close()
    answer = alice.get(f"/job/ln3/{jobid}")
    detail = ok_output(answer)
    assert detail["status"][jobid] == "Failed"
    # served from the kept record past the router, as the route would, every header kept
    assert alice.get(f"/job/ln3/{jobid}/").content == answer.content
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["x-request-id"]
    assert "is not a job id" in alice.get("/job/ln3/12x").json()["error"]
    assert detail["exitcode"][jobid] == "3:0"
    assert f"{jobid}.batch" in detail["status"]
    bob = gateway.login("bob")
    try:
        assert bob.get(f"/job/ln3/{jobid}").status_code == 403
    finally:
        bob.close()
    # A gateway on the same store whose squeue and sacct always fail still answers it:
    # the kept record is read, neither accounting nor the controller is asked.
    blind = start_server(
        events_config(
            events_dir / "state.sqlite",
            extra='commands = { squeue = "false", sacct = "false" }',
            monitor="embedded = false",
        ),
        events_dir,
    )
    try:
        client = blind.login("alice")
        assert ok_output(client.get(f"/job/ln3/{jobid}")) == detail
        assert client.get(f"/job/ln3/{int(jobid) + 100000}").status_code == 503
        client.close()
    finally:
        stop_server(blind)
