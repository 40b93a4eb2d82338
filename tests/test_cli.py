"""The hpcgate command: help that tells the truth, clear config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def hpcgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcgate", *args], capture_output=True, text=True)


def test_help_lists_the_commands_with_examples() -> None:
    top = hpcgate("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "hash-password" in top.stdout
    assert "for users of a gateway:" in top.stdout and "hpcgate submit" in top.stdout
    serve = hpcgate("serve", "--help")
    assert "--config" in serve.stdout and "example:" in serve.stdout


def test_a_bad_config_exits_2_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'eighty'\n")
    result = hpcgate("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "server.port" in result.stderr and "Traceback" not in result.stderr


BROKEN_CONFIGS = {
    "a typo in commands": (
        '[machines.ln3]\ncommands = { sbach = "yhbatch" }\n',
        "machines.ln3.commands: unknown Slurm command 'sbach'",
    ),
    "an unknown runner": (
        '[machines.ln3]\nrunner = "sssh"\n',
        "machines.ln3.runner: 'sssh' is not an installed plug-in",
    ),
    "an ssh runner without its section": (
        '[machines.ln3]\nrunner = "ssh"\n',
        "machines.ln3: runner = 'ssh' needs an [machines.<name>.ssh] section",
    ),
    "a missing known_hosts": (
        '[machines.ln3]\nrunner = "ssh"\n'
        'ssh = { hosts = ["localhost"], known_hosts = "absent_hosts", ca_key = "ca" }\n',
        "machines.ln3.ssh.known_hosts",
    ),
    "a missing ca_key": (
        '[machines.ln3]\nrunner = "ssh"\n'
        'ssh = { hosts = ["localhost"], known_hosts = "known_hosts", ca_key = "absent_ca" }\n',
        "machines.ln3.ssh.ca_key",
    ),
    "a CA key that is not a key": (
        '[machines.ln3]\nrunner = "ssh"\n'
        'ssh = { hosts = ["localhost"], known_hosts = "known_hosts", ca_key = "known_hosts" }\n',
        "machines.ln3.ssh.ca_key",
    ),
    "half a TLS pair": (
        '[server]\ntls_certfile = "cert.pem"\n',
        "server.tls_certfile and server.tls_keyfile go together",
    ),
    "a TLS file that is not there": (
        '[server]\ntls_certfile = "absent.pem"\ntls_keyfile = "absent.key"\n',
        "server.tls_certfile: ",
    ),
    "an unknown authenticator": ('[auth]\nbackend = "ldap"\n', "auth.backend: 'ldap'"),
    "a users file that is not there": (
        '[auth]\nbackend = "users_file"\nusers_file = "absent.toml"\n',
        "auth.users_file: ",
    ),
    "an unknown monitor account": (
        '[monitor]\naccount = "no-such-user-here"\n[machines.ln3]\n',
        "monitor.account: there is no Unix account 'no-such-user-here'",
    ),
}


@pytest.mark.parametrize("case", BROKEN_CONFIGS)
def test_a_broken_config_is_one_line_naming_the_setting(tmp_path: Path, case: str) -> None:
    text, expected = BROKEN_CONFIGS[case]
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca")], check=True
    )
    (tmp_path / "known_hosts").write_text("localhost ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\n")
    (tmp_path / "hpcgate.toml").write_text(text)
    result = hpcgate("serve", "--config", str(tmp_path / "hpcgate.toml"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcgate: "), result.stderr
    assert expected in lines[0], lines[0]
