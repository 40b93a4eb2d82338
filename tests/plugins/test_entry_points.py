"""Plug-ins are found by entry point: an out-of-tree runner, registered by a tiny package
of its own (tests/plugins/site), is named in a gateway's configuration and used by it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcgate import plugins
from tests.conftest import ok_output, start_server, stop_server

SITE = Path(__file__).parent / "site"


def test_hpcgate_registers_its_own_parts_as_plugins() -> None:
    assert plugins.registered(plugins.SCHEDULERS) == ["slurm"]
    assert {"local", "ssh"} <= set(plugins.registered(plugins.RUNNERS))
    assert {"pam", "users_file"} <= set(plugins.registered(plugins.AUTHENTICATORS))


def test_an_unknown_plugin_names_the_installed_ones() -> None:
    installed = ", ".join(plugins.registered(plugins.RUNNERS))
    with pytest.raises(plugins.PluginError, match=f"installed: {installed}$"):
        plugins.load(plugins.RUNNERS, "journaling")


@pytest.mark.usefixtures("cluster")
def test_a_gateway_uses_an_out_of_tree_runner(public_dir: Path) -> None:
    journal = public_dir / "journal.txt"
    config = f"""
[auth]
failed_login_delay = 0.05
[monitor]
account = "hpcmon"
[machines.ln3]
runner = "journaling"
options = {{ journal = "{journal}" }}
"""
    pythonpath = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
    server = start_server(config, public_dir, env={"PYTHONPATH": pythonpath})
    try:
        alice = server.login("alice")
        done = ok_output(alice.post("/command/ln3", data={"command": "id -un"}))
        alice.close()
        assert done["output"] == "alice\n"
        assert "alice /bin/bash\n" in journal.read_text(), "the command went through the plug-in"
    finally:
        stop_server(server)


def test_without_the_package_the_name_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "hpcgate.toml"
    config.write_text('[machines.ln3]\nrunner = "journaling"\n')
    done = subprocess.run(
        [sys.executable, "-m", "hpcgate", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    installed = ", ".join(plugins.registered(plugins.RUNNERS))
    assert "machines.ln3.runner" in done.stderr and f"installed: {installed}" in done.stderr
