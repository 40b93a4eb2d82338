"""The hpcgate command: help that tells the truth, clear config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
