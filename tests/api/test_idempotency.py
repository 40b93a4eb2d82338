"""Idempotency-Key on POST /api/job: retries never double a job."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest

from tests.conftest import Server, error_of, ok_output


@pytest.fixture
def alice(local_server: Server) -> Iterator[httpx.Client]:
    client = local_server.login("alice")
    yield client
    client.close()


def jobs_named(name: str) -> list[str]:
    listed = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def body(name: str, script: str = "#!/bin/bash\nsleep 120\n") -> dict[str, str]:
    return {"jobscript": script, "jobconf": f'{{"job_name": "{name}"}}'}


def test_a_retry_returns_the_first_job(alice: httpx.Client) -> None:
    name, key = f"idem-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    first = ok_output(alice.post("/job/ln3", data=body(name), headers={"Idempotency-Key": key}))
    again = ok_output(alice.post("/job/ln3", data=body(name), headers={"Idempotency-Key": key}))
    assert first == again
    assert jobs_named(name) == [first["jobid"]]
    other = alice.post("/job/ln3", data=body(name + "x"), headers={"Idempotency-Key": key})
    assert "used for a different request" in error_of(other, 409)
    subprocess.run(["scancel", first["jobid"]], check=False)


def test_racing_retries_submit_once(local_server: Server) -> None:
    name, key = f"race-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    answers: list[httpx.Response] = []

    def send() -> None:
        with closing(local_server.login("alice")) as client:
            answers.append(
                client.post("/job/slow", data=body(name), headers={"Idempotency-Key": key})
            )

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jobids = {ok_output(answer)["jobid"] for answer in answers}
    assert len(jobids) == 1 and jobs_named(name) == list(jobids)
    subprocess.run(["scancel", *jobids], check=False)


def test_a_client_that_hung_up_mid_flight_gets_its_job_on_retry(local_server: Server) -> None:
    name, key = f"hangup-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    with closing(local_server.login("alice")) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/job/slow", data=body(name), headers={"Idempotency-Key": key}, timeout=0.5)
    with closing(local_server.login("alice")) as client:
        retried = ok_output(
            client.post("/job/slow", data=body(name), headers={"Idempotency-Key": key})
        )
    assert jobs_named(name) == [retried["jobid"]], "the first request finished; nothing doubled"
    subprocess.run(["scancel", retried["jobid"]], check=False)


def test_a_refused_submit_frees_its_key(alice: httpx.Client) -> None:
    key, name = str(uuid.uuid4()), f"fixed-{uuid.uuid4().hex[:8]}"
    refused = alice.post(
        "/job/ln3",
        data={"jobscript": "#!/bin/sh\n", "jobconf": '{"partition": "nosuch"}'},
        headers={"Idempotency-Key": key},
    )
    error_of(refused, 400)
    fixed = ok_output(alice.post("/job/ln3", data=body(name), headers={"Idempotency-Key": key}))
    assert jobs_named(name) == [fixed["jobid"]]
    subprocess.run(["scancel", fixed["jobid"]], check=False)


def test_keys_belong_to_their_user(local_server: Server, alice: httpx.Client) -> None:
    key = str(uuid.uuid4())
    mine = ok_output(alice.post("/job/ln3", data=body("a"), headers={"Idempotency-Key": key}))
    with closing(local_server.login("bob")) as bob:
        theirs = ok_output(bob.post("/job/ln3", data=body("a"), headers={"Idempotency-Key": key}))
    assert mine != theirs
    subprocess.run(["scancel", mine["jobid"], theirs["jobid"]], check=False)


def test_a_malformed_key_is_400(alice: httpx.Client) -> None:
    answer = alice.post("/job/ln3", data=body("x"), headers={"Idempotency-Key": "k" * 300})
    assert "Idempotency-Key" in error_of(answer, 400)


def test_any_refusal_before_submitting_frees_its_key(alice: httpx.Client) -> None:
    key, name = str(uuid.uuid4()), f"after403-{uuid.uuid4().hex[:8]}"
    refused = alice.post(
        "/job/ln3",
        data={"jobscript": "#!/bin/sh\n", "jobfilepath": "/root/not-yours.sh"},
        headers={"Idempotency-Key": key},
    )
    error_of(refused, 403)
    fixed = ok_output(alice.post("/job/ln3", data=body(name), headers={"Idempotency-Key": key}))
    assert jobs_named(name) == [fixed["jobid"]]
    subprocess.run(["scancel", fixed["jobid"]], check=False)
