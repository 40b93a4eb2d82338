"""The shipped systemd units load cleanly (with and without the local-runner drop-in),
and the shipped logrotate snippet rotates a real gateway's audit log while it runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, start_server, stop_server, wait_for
from tests.deploy.conftest import need

DEPLOY = REPO / "deploy"
UNITS = ("hpcgate.service", "hpcgate-monitor.service")
SHIPPED_EXECUTABLE = "/opt/hpcgate/bin/hpcgate"


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("local_runner", [False, True], ids=["ssh-only", "local-runner"])
def test_the_unit_loads_without_a_complaint(tmp_path: Path, unit: str, local_runner: bool) -> None:
    need("systemd-analyze")
    text = (DEPLOY / "systemd" / unit).read_text()
    assert SHIPPED_EXECUTABLE in text
    # the one value that differs here: where hpcgate is installed
    executable = str(Path(sys.executable).with_name("hpcgate"))
    (tmp_path / unit).write_text(text.replace(SHIPPED_EXECUTABLE, executable))
    if local_runner:
        dropins = tmp_path / f"{unit}.d"
        dropins.mkdir()
        (dropins / "local-runner.conf").write_text(
            (DEPLOY / "systemd" / "local-runner.conf").read_text()
        )
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout + verified.stderr == ""


def _entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logrotate_rotates_the_audit_log_of_a_running_gateway(
    cluster: None, public_dir: Path, tmp_path: Path
) -> None:
    need("logrotate")
    logs = tmp_path / "log"
    logs.mkdir(mode=0o750)
    audit = logs / "audit.log"
    # the snippet with this test's path and account (no hpcgate account here)
    snippet = (DEPLOY / "logrotate" / "hpcgate").read_text()
    assert "/var/log/hpcgate/audit.log" in snippet and "hpcgate hpcgate" in snippet
    config = tmp_path / "logrotate.conf"
    config.write_text(
        snippet.replace("/var/log/hpcgate/audit.log", str(audit)).replace(
            "hpcgate hpcgate", "root root"
        )
    )
    gateway = start_server(f'[audit]\nfile = "{audit}"\n[machines.ln3]\n', public_dir)
    try:
        with httpx.Client(base_url=f"{gateway.url}/api") as client:
            client.get("/job/ln3/before-rotation")
            wait_for(lambda: audit.exists() and audit.stat().st_size > 0, what="an audit line")
            rotated = subprocess.run(
                ["logrotate", "--force", "--state", str(tmp_path / "state"), str(config)],
                capture_output=True,
                text=True,
            )
            assert rotated.returncode == 0, rotated.stderr
            (old,) = logs.glob("audit.log-*")
            client.get("/job/ln3/after-rotation")
    finally:
        stop_server(gateway)
    before = [entry["route"] for entry in _entries(old)]
    after = [entry["route"] for entry in _entries(audit)]
    assert "/api/job/ln3/before-rotation" in before
    # the gateway goes on writing into the emptied file, from its start (no hole of NULs)
    assert after and after[-1] == "/api/job/ln3/after-rotation"
    assert "/api/job/ln3/before-rotation" not in after
