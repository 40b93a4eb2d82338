"""Bad input and missing logins: each gets a clear error in the envelope, nothing half-done."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import error_of

SCRIPT = "#!/bin/bash\ntrue\n"


def submit_error(client: httpx.Client, status: int, **fields: Any) -> str:
    return error_of(client.post("/job/ln3/", data=fields), status)


def conf(**values: Any) -> str:
    return json.dumps(values)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/command/ln3"),
        ("POST", "/job/ln3"),
        ("POST", "/job/ln3/"),
        ("GET", "/job/ln3"),
        ("GET", "/job/ln3/12"),
        ("DELETE", "/job/ln3"),
        ("DELETE", "/job/ln3/12"),
        ("GET", "/job/nosuchmachine"),
    ],
)
def test_every_job_route_needs_a_login(anonymous: httpx.Client, method: str, path: str) -> None:
    assert "not logged in" in error_of(anonymous.request(method, path), 401)


def test_a_forged_or_stale_token_is_401(anonymous: httpx.Client) -> None:
    answer = anonymous.get("/job/ln3", headers={"Authorization": "Bearer forged"})
    error_of(answer, 401)


def test_unknown_machine_is_404_naming_the_machines(alice: httpx.Client) -> None:
    message = error_of(alice.get("/job/nosuch"), 404)
    assert "nosuch" in message and "ln3" in message
    error_of(alice.post("/command/nosuch", data={"command": "true"}), 404)


def test_unknown_jobconf_key_is_named(alice: httpx.Client) -> None:
    message = submit_error(alice, 400, jobscript=SCRIPT, jobconf=conf(job_nmae="x"))
    assert "'job_nmae'" in message and "job_name" in message


@pytest.mark.parametrize(
    ("jobconf", "words"),
    [
        (conf(time_limit="ten"), "time_limit must be a whole number"),
        (conf(time_limit=0), "time_limit must be between 1"),
        (conf(time_limit=-5), "time_limit must be between 1"),
        (conf(scale_Nodes=10**9), "scale_Nodes must be between 1"),
        (conf(scale_cores=True), "scale_cores must be a whole number"),
        (conf(scale_memGB=-1), "scale_memGB must be more than 0"),
        (conf(scale_memGB="lots"), "scale_memGB must be a number"),
        (conf(job_name="two\nlines"), "job_name must not contain control characters"),
        (conf(job_wdir="/tmp/\u0000x"), "job_wdir must not contain control characters"),
        (conf(partition="work --wrap=x"), "partition may hold only"),
        (conf(jobfile_args=[1, 2]), "jobfile_args[0] must be a string"),
        (conf(job_name=""), "job_name must not be empty"),
        ("{not json", "jobconf is not valid JSON"),
        ("[1, 2]", "jobconf must be a JSON object"),
    ],
)
def test_bad_jobconf_values(alice: httpx.Client, jobconf: str, words: str) -> None:
    assert words in submit_error(alice, 400, jobscript=SCRIPT, jobconf=jobconf)


def test_both_jobscript_and_jobfile_is_400(alice: httpx.Client) -> None:
    assert "not both" in submit_error(alice, 400, jobscript=SCRIPT, jobfile="/home/alice/x.sh")


def test_nothing_to_submit_is_400(alice: httpx.Client) -> None:
    assert "nothing to submit" in submit_error(alice, 400, jobconf=conf(job_name="x"))


def test_a_script_without_an_interpreter_line_is_400(alice: httpx.Client) -> None:
    assert "#!/bin/bash" in submit_error(alice, 400, jobscript="echo hi\n")


def test_a_missing_jobfile_is_400_with_the_path(alice: httpx.Client) -> None:
    message = submit_error(alice, 400, jobfile="/home/alice/no/such/script.sh")
    assert "/home/alice/no/such/script.sh" in message


def test_a_script_path_the_user_may_not_write_is_403_with_the_reason(alice: httpx.Client) -> None:
    message = submit_error(alice, 403, jobscript=SCRIPT, jobfilepath="/root/job.sh")
    assert "/root/job.sh" in message and "Permission denied" in message
    assert not Path("/root/job.sh").exists()


def test_a_partition_slurm_rejects_is_400_with_slurms_message(alice: httpx.Client) -> None:
    tag = f"# rejected {secrets.token_hex(8)}\n"  # other tests write alice's scripts meanwhile
    message = submit_error(alice, 400, jobscript=SCRIPT + tag, jobconf=conf(partition="nosuch"))
    assert "Invalid partition name specified" in message
    left = [path for path in Path("/home/alice/newt").glob("*.sh") if tag in path.read_text()]
    assert not left, "a generated script of a rejected job must not be left behind"


@pytest.mark.parametrize("jobid", ["abc", "12;rm", "-1", "1.batch", "9" * 40])
def test_a_malformed_jobid_is_400(alice: httpx.Client, jobid: str) -> None:
    assert "not a job id" in error_of(alice.get(f"/job/ln3/{jobid}"), 400)


def test_kill_without_a_jobid_is_400(alice: httpx.Client) -> None:
    assert "jobid" in error_of(alice.delete("/job/ln3"), 400)


def test_a_json_body_that_is_not_an_object_is_400(alice: httpx.Client) -> None:
    answer = alice.post("/job/ln3", content=b"[1]", headers={"content-type": "application/json"})
    assert "must be an object" in error_of(answer, 400)
    answer = alice.post("/job/ln3", content=b"{oops", headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(answer, 400)


def test_an_unsupported_body_type_is_400(alice: httpx.Client) -> None:
    answer = alice.post("/job/ln3", content=b"x", headers={"content-type": "text/plain"})
    assert "application/json" in error_of(answer, 400)


@pytest.mark.parametrize("path", ["/job//ln3", "/job/ln3//", "/job//ln3/", "/job/ln3/1//"])
def test_an_empty_path_segment_is_no_route(alice: httpx.Client, path: str) -> None:
    """The reads answered from snapshots know exactly the routes' paths."""
    assert "no such route" in error_of(alice.get(path), 404)


def test_unknown_routes_and_methods_answer_in_the_envelope(anonymous: httpx.Client) -> None:
    assert "no such route" in error_of(anonymous.get("/nothing/here"), 404)
    not_allowed = anonymous.put("/job/ln3")
    assert "not allowed" in error_of(not_allowed, 405)
    assert not_allowed.headers["Allow"] == "DELETE, GET, POST", "RFC 9110: every method listed"
