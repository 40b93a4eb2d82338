"""The user CLI as a person runs it: a separate process talking to a real gateway."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORDS, Server, wait_for


class Cli:
    def __init__(self, server: Server, home: Path) -> None:
        self.url = server.url
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(home), "HPCGATE_URL": server.url}

    def __call__(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpcgate", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )

    def login(self, user: str) -> None:
        done = self("login", user, stdin=PASSWORDS[user] + "\n")
        assert done.returncode == 0, done.stderr


@pytest.fixture
def cli(server: Server, tmp_path: Path) -> Cli:
    return Cli(server, tmp_path / "config")


def test_a_scientists_day(cli: Cli, tmp_path: Path) -> None:
    cli.login("alice")
    settings = tmp_path / "config" / "hpcgate" / "client.json"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert json.loads(settings.read_text())["url"] == cli.url

    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho from the laptop\n")
    submitted = cli("submit", "ln3", str(script), "--name", "laptop", "--time", "5")
    assert submitted.returncode == 0, submitted.stderr
    jobid = submitted.stdout.strip()
    assert jobid.isdigit()

    listing = cli("queue", "ln3", "--json")
    assert listing.returncode == 0
    waited = cli("wait", "ln3", jobid, "--timeout", "120")
    assert waited.returncode == 0 and "Completed" in waited.stdout, waited

    def shown_with_steps() -> dict[str, Any] | None:
        # accounting may record a job's end a moment before its steps'
        job: dict[str, Any] = json.loads(cli("show", "ln3", jobid, "--json").stdout)
        return job if any(step["id"] == f"{jobid}.batch" for step in job["steps"]) else None

    job = wait_for(shown_with_steps, timeout=30, what="the batch step in the detail")
    assert job["state"] == "Completed" and job["exit_code"] == "0:0" and job["name"] == "laptop"
    human = cli("show", "ln3", jobid)
    assert f"{jobid}.batch" in human.stdout and "Completed" in human.stdout

    status = cli("status", "--json")
    assert "ln3" in [m["name"] for m in json.loads(status.stdout)]
    assert cli("logout").returncode == 0
    after = cli("queue", "ln3")
    assert after.returncode == 1 and "hpcgate login" in after.stderr


def test_run_returns_the_remote_exit_code(cli: Cli) -> None:
    cli.login("bob")
    done = cli("run", "ln3", "--", "ls", "/root")
    assert done.returncode == 2 and "Permission denied" in done.stderr
    echoed = cli("run", "ln3", "--", "echo", "$USER")
    assert (echoed.returncode, echoed.stdout) == (0, "bob\n")


def test_wait_on_a_failing_job_exits_3(cli: Cli, tmp_path: Path) -> None:
    cli.login("alice")
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/bash\nexit 5\n")
    jobid = cli("submit", "ln3", str(script)).stdout.strip()
    waited = cli("wait", "ln3", jobid, "--timeout", "120")
    assert waited.returncode == 3 and "Failed" in waited.stdout and "5:0" in waited.stdout


def test_cancel_and_errors(cli: Cli, tmp_path: Path, server: Server) -> None:
    cli.login("alice")
    script = tmp_path / "long.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    jobid = cli("submit", "ln3", str(script)).stdout.strip()

    bob = Cli(server, tmp_path / "bob")
    bob.login("bob")
    refused = bob("cancel", "ln3", jobid)
    assert refused.returncode == 1 and "belongs to another user" in refused.stderr

    assert cli("cancel", "ln3", jobid).returncode == 0
    unknown = cli("queue", "nosuch")
    assert unknown.returncode == 1 and "unknown machine 'nosuch'" in unknown.stderr
    missing = cli("submit", "ln3", str(tmp_path / "absent.sh"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_wrong_password(cli: Cli) -> None:
    done = cli("login", "alice", stdin="not-it\n")
    assert done.returncode == 1 and "wrong username or password" in done.stderr


def test_no_url_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HPCGATE_URL"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "hpcgate", "queue", "ln3"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and "no gateway URL" in done.stderr


def test_every_command_has_help_with_an_example() -> None:
    for command in (
        "login",
        "logout",
        "run",
        "submit",
        "queue",
        "show",
        "cancel",
        "wait",
        "status",
    ):
        done = subprocess.run(
            [sys.executable, "-m", "hpcgate", command, "--help"], capture_output=True, text=True
        )
        assert done.returncode == 0 and "example:" in done.stdout, command
