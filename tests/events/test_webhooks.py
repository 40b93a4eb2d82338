"""Webhooks against a real receiver on 127.0.0.1: signed deliveries, bad input, failures,
retries, disabling, the delivery log, and notify_url on submit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, error_of, ok_output, wait_for
from tests.events.conftest import Receiver, verify

SHORT = "#!/bin/bash\nsleep 4\n"  # long enough for a 1 s monitor to see it run


@pytest.fixture
def alice(gateway: Server) -> Iterator[httpx.Client]:
    client = gateway.login("alice")
    yield client
    client.close()


def submit(client: httpx.Client, **fields: str) -> str:
    return str(ok_output(client.post("/job/ln3", data={"jobscript": SHORT, **fields}))["jobid"])


def test_events_are_posted_signed_once_each_and_logged(
    alice: httpx.Client, receiver: Receiver
) -> None:
    created = ok_output(
        alice.post(
            "/subscriptions",
            json={"url": receiver.url, "types": ["org.hpcgate.job.completed", "running"]},
        )
    )
    secret = created["secret"]
    assert secret.startswith("whsec_") and created["status"] == "active"
    jobid = submit(alice)
    wait_for(
        lambda: any(
            e["type"].endswith(".completed")
            for e in receiver.events()
            if e["data"]["jobid"] == jobid
        ),
        timeout=60,
        what="the completed event at the receiver",
    )
    mine = [
        item for item in receiver.received if json.loads(item["body"])["data"]["jobid"] == jobid
    ]
    kinds = [json.loads(item["body"])["type"] for item in mine]
    assert sorted(kinds) == ["org.hpcgate.job.completed", "org.hpcgate.job.running"], kinds
    for item in mine:
        assert verify(secret, item["headers"], item["body"])
        assert not verify("whsec_wrong", item["headers"], item["body"])
        assert item["headers"]["Content-Type"] == "application/cloudevents+json"
        assert item["headers"]["Hpcgate-Event-Id"] == json.loads(item["body"])["id"]
    log = ok_output(alice.get(f"/subscriptions/{created['id']}/deliveries"))
    assert {entry["outcome"] for entry in log} == {"delivered"}
    listed = ok_output(alice.get("/subscriptions"))
    assert created["id"] in [sub["id"] for sub in listed]
    assert all("secret" not in sub for sub in listed)
    ok_output(alice.delete(f"/subscriptions/{created['id']}"))
    assert alice.get(f"/subscriptions/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("not a url", "malformed"),
        ("ftp://127.0.0.1/x", "http or https"),
        ("http:///nohost", "no host"),
        ("http://127.0.0.2:9/x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://169.254.169.254/latest", "link-local"),
        ("http://user:pw@127.0.0.1/x", "user name"),
    ],
)
def test_a_destination_that_is_malformed_or_not_allowed_is_refused(
    alice: httpx.Client, url: str, why: str
) -> None:
    assert why in error_of(alice.post("/subscriptions", json={"url": url}), 400)


def test_another_users_subscription_is_not_found(
    gateway: Server, alice: httpx.Client, receiver: Receiver
) -> None:
    created = ok_output(alice.post("/subscriptions", json={"url": receiver.url}))
    bob = gateway.login("bob")
    for answer in (
        bob.get(f"/subscriptions/{created['id']}"),
        bob.get(f"/subscriptions/{created['id']}/deliveries"),
        bob.delete(f"/subscriptions/{created['id']}"),
    ):
        error_of(answer, 404)
    assert created["id"] not in [s["id"] for s in ok_output(bob.get("/subscriptions"))]
    bob.close()
    ok_output(alice.delete(f"/subscriptions/{created['id']}"))


def test_a_failing_receiver_is_retried_then_the_subscription_is_disabled(
    alice: httpx.Client, receiver: Receiver
) -> None:
    receiver.status = 500
    jobid = submit(alice)
    created = ok_output(alice.post("/subscriptions", data={"url": receiver.url, "jobid": jobid}))
    subscription = wait_for(
        lambda: (
            (found := ok_output(alice.get(f"/subscriptions/{created['id']}")))["status"]
            == "disabled"
            and found
        ),
        timeout=60,
        what="the subscription to be disabled",
    )
    assert "delivery attempts in a row failed" in subscription["disabled_reason"]
    assert "HTTP 500" in subscription["disabled_reason"]
    log = ok_output(alice.get(f"/subscriptions/{created['id']}/deliveries"))
    # every attempt is logged (concurrent deliveries may add one past the threshold)
    wait_for(
        lambda: (
            len(ok_output(alice.get(f"/subscriptions/{created['id']}/deliveries")))
            >= len(receiver.received)
        ),
        timeout=10,
        what="the log of every attempt",
    )
    log = ok_output(alice.get(f"/subscriptions/{created['id']}/deliveries"))
    assert len([entry for entry in log if entry["status"] == 500]) == len(receiver.received)
    assert len(receiver.received) >= 6
    attempts = sorted(entry["attempt"] for entry in log if entry["event_id"] == log[-1]["event_id"])
    assert attempts[:2] == [1, 2], "the first delivery was retried"
    assert any(entry["outcome"] == "retrying" for entry in log)
    assert all(json.loads(item["body"])["data"]["jobid"] == jobid for item in receiver.received)


def test_a_receiver_that_is_down_gets_the_event_when_it_is_back(
    alice: httpx.Client, receiver: Receiver
) -> None:
    receiver.status = 503
    created = ok_output(
        alice.post("/subscriptions", json={"url": receiver.url, "types": "pending"})
    )
    jobid = submit(alice)

    def of_this_job() -> list[dict[str, Any]]:  # alice's jobs of other tests go pending too
        return [event for event in receiver.events() if event["data"]["jobid"] == jobid]

    first = wait_for(of_this_job, timeout=30, what="a first attempt")[0]
    receiver.status = 200
    wait_for(
        lambda: any(
            entry["outcome"] == "delivered" and entry["event_id"] == first["id"]
            for entry in ok_output(alice.get(f"/subscriptions/{created['id']}/deliveries"))
        ),
        timeout=30,
        what="a delivery after the receiver came back",
    )
    events = of_this_job()
    assert len(events) >= 2 and {event["id"] for event in events} == {first["id"]}, (
        "one event, retried"
    )
    ok_output(alice.delete(f"/subscriptions/{created['id']}"))


def test_notify_url_on_submit_subscribes_to_that_job_only(
    alice: httpx.Client, receiver: Receiver
) -> None:
    refused = alice.post("/job/ln3", data={"jobscript": SHORT, "notify_url": "http://10.0.0.1/"})
    assert "private" in error_of(refused, 400)
    output = ok_output(
        alice.post("/job/ln3", data={"jobscript": SHORT, "notify_url": receiver.url})
    )
    jobid, notify = output["jobid"], output["notify"]
    assert notify["jobid"] == jobid and notify["machine"] == "ln3"
    other = submit(alice)
    wait_for(
        lambda: any(e["type"].endswith(".completed") for e in receiver.events()),
        timeout=60,
        what="the job's completion at the receiver",
    )
    assert {event["data"]["jobid"] for event in receiver.events()} == {jobid}
    assert other != jobid
    for item in receiver.received:
        assert verify(notify["secret"], item["headers"], item["body"])
