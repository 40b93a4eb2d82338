"""Hostile input: schemathesis against our OpenAPI document, and a corpus of nasty values.

Every answer must be the envelope with a 4xx that says what is wrong, or a success that
handled the value safely: never a 5xx, never a value that reached a shell or became an
option.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server


@pytest.fixture(scope="module")
def fuzzed(cluster: None, public_dir: Path) -> Iterator[Server]:
    """A gateway of its own: the fuzzer's many failed logins must not lock out the rest."""
    server = start_server(
        "[auth]\nfailed_login_delay = 0\nmax_failures_per_user = 100000\n"
        "max_failures_per_address = 100000\n[machines.ln3]\n",
        public_dir,
    )
    yield server
    stop_server(server)


# A webhook's destination is resolved and checked against the allow-list when it is
# given: a well-formed URL of a host that does not resolve here is rightly a 400, which
# no schema can express. The event stream never ends by design (tests/events cover it).
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path = "/api/subscriptions"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


def test_schemathesis_finds_nothing(fuzzed: Server, tmp_path: Path) -> None:
    local_server = fuzzed
    schemathesis = str(Path(sys.executable).parent / "schemathesis")  # the venv's own
    with local_server.client() as client:
        login = client.post("/auth", data={"username": "alice", "password": "wonderland"})
        token = login.json()["output"]["token"]
    settings = tmp_path / "schemathesis.toml"
    settings.write_text(SCHEMATHESIS_CONFIG)
    done = subprocess.run(
        [
            schemathesis,
            "--config-file",
            str(settings),
            "run",
            f"{local_server.url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            "25",
            "--seed",
            "20261127",
            "--request-timeout",
            "60",
            "--exclude-path",
            "/api/events",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:]


@pytest.fixture
def alice(local_server: Server) -> Iterator[httpx.Client]:
    client = local_server.login("alice")
    yield client
    client.close()


def marker() -> Path:
    return Path("/tmp") / f"hpcgate-pwned-{uuid.uuid4().hex}"


NASTY_TEXT = [
    "$(touch {m})",
    "`touch {m}`",
    "; touch {m}",
    "| touch {m}",
    "&& touch {m}",
    "--wrap=touch {m}",
    "-o{m}",
    "../../../../etc/passwd",
    "x" * 5000,
    "é€😀",
]
CONTROL = ["a\nb", "a\rb", "a\x00b", "a\x1bb", "a\tb"]


@pytest.mark.parametrize("value", NASTY_TEXT + CONTROL)
@pytest.mark.parametrize("key", ["job_name", "job_wdir", "partition", "jobfile_args"])
def test_nasty_jobconf_values(alice: httpx.Client, key: str, value: str) -> None:
    canary = marker()
    answer = alice.post(
        "/job/ln3",
        data={
            "jobscript": "#!/bin/bash\ntrue\n",
            "jobconf": json.dumps({key: value.format(m=canary)}),
        },
    )
    body = answer.json()
    assert answer.status_code < 500 and body["status_code"] == answer.status_code, body
    if answer.status_code != 200:
        assert body["error"], "a refusal says why"
    else:
        subprocess.run(["scancel", body["output"]["jobid"]], check=False)
    assert not canary.exists(), "a value reached a shell"


@pytest.mark.parametrize("value", NASTY_TEXT + CONTROL)
@pytest.mark.parametrize("field", ["jobfilepath", "jobfile"])
def test_nasty_paths(alice: httpx.Client, field: str, value: str) -> None:
    canary = marker()
    data = {field: value.format(m=canary)}
    if field == "jobfilepath":
        data["jobscript"] = "#!/bin/bash\ntrue\n"
    answer = alice.post("/job/ln3", data=data)
    body = answer.json()
    assert answer.status_code < 500 and body["status_code"] == answer.status_code, body
    if answer.status_code == 200:
        subprocess.run(["scancel", body["output"]["jobid"]], check=False)
    assert not canary.exists()


@pytest.mark.parametrize(
    "segment",
    ["%2e%2e", "ln3%00", "ln3;id", "$(id)", "-rf", "x" * 300, "%ff%fe", "ln3%0a"],
)
def test_nasty_path_segments(alice: httpx.Client, segment: str) -> None:
    for path in (f"/job/{segment}", f"/job/ln3/{segment}", f"/command/{segment}"):
        answer = (
            alice.get(path)
            if not path.startswith("/command")
            else alice.post(path, data={"command": "true"})
        )
        assert 400 <= answer.status_code < 500, (path, answer.text)
        assert answer.json()["error"]


@pytest.mark.parametrize(
    "raw",
    [b"jobscript=%ff%fe&jobconf=%ff", b"\xff\xfe\x00", b"jobconf=" + b"%7B" * 10000],
)
def test_non_utf8_and_malformed_bodies(alice: httpx.Client, raw: bytes) -> None:
    answer = alice.post(
        "/job/ln3", content=raw, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert 400 <= answer.status_code < 500 and answer.json()["error"], answer.text
