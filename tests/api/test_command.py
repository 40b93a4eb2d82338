"""POST /api/command/<machine>: the page's examples, and who the command runs as."""

from __future__ import annotations

import subprocess
from contextlib import closing

import httpx
import pytest

from hpcgate.config import LimitsConfig
from tests.conftest import CANARY, Server, error_of, ok_output, wait_for


def run(client: httpx.Client, command: str, machine: str = "ln3") -> dict[str, object]:
    result: dict[str, object] = ok_output(
        client.post(f"/command/{machine}", data={"command": command})
    )
    return result


def test_the_pages_examples(alice: httpx.Client) -> None:
    touch = run(alice, "touch /root/a")
    assert touch == {
        "output": "",
        "retcode": 1,
        "error": "touch: cannot touch '/root/a': Permission denied\n",
    }
    listing = run(alice, "ls /root")
    assert listing["retcode"] == 2
    assert "Permission denied" in str(listing["error"])


def test_json_body_and_trailing_slash(alice: httpx.Client) -> None:
    answer = alice.post("/command/ln3/", json={"command": "echo hi"})
    assert ok_output(answer) == {"output": "hi\n", "retcode": 0, "error": ""}


def test_runs_as_the_user_with_groups_home_and_a_clean_environment(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    assert run(alice, "id -un; id -Gn; pwd")["output"] == "alice\nalice hpcusers\n/home/alice\n"
    assert run(bob, "id -un")["output"] == "bob\n"
    environment = str(run(alice, "env")["output"])
    for name, value in [("HOME", "/home/alice"), ("USER", "alice"), ("LOGNAME", "alice")]:
        assert f"{name}={value}\n" in environment
    assert "SHELL=/bin/bash" in environment and "PATH=" in environment
    assert CANARY not in environment, "the service's own environment leaked into the user's"


def tight_limits(server: Server) -> LimitsConfig:
    config = server.config()
    return config.machines["tight"].effective_limits(config.limits)


def test_command_past_its_timeout_is_killed_with_its_children(
    server: Server, alice: httpx.Client
) -> None:
    answer = alice.post("/command/tight", data={"command": "sleep 777.5 & sleep 777.5; echo never"})
    assert f"did not finish within {tight_limits(server).timeout:g} s" in error_of(answer, 504)

    def gone() -> bool:
        found = subprocess.run(["pgrep", "-u", "alice", "-f", "sleep 777.5"], capture_output=True)
        return found.returncode == 1

    assert wait_for(gone, timeout=10, what="the command's processes to be killed")


def test_output_past_the_cap_is_an_error(server: Server, alice: httpx.Client) -> None:
    message = error_of(alice.post("/command/tight", data={"command": "yes"}), 400)
    assert f"more than {tight_limits(server).output_bytes} bytes" in message


def test_a_missing_or_empty_command_is_400(alice: httpx.Client) -> None:
    assert "command" in error_of(alice.post("/command/ln3", data={}), 400)
    assert "command" in error_of(alice.post("/command/ln3", json={"command": "  "}), 400)
    assert "NUL" in error_of(alice.post("/command/ln3", json={"command": "echo \u0000"}), 400)


def test_a_command_whose_client_went_away_is_killed(server: Server) -> None:
    with closing(server.login("alice")) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/command/ln3", data={"command": "sleep 543.25; echo late"}, timeout=1)

    def gone() -> bool:
        found = subprocess.run(["pgrep", "-u", "alice", "-f", "sleep 543.25"], capture_output=True)
        return found.returncode == 1

    assert wait_for(gone, timeout=15, what="the abandoned command to be killed")
