"""Packaging: `pip install hpcgate` is the client alone, `hpcgate[server]` the gateway; one
version everywhere; metadata that builds without deprecation warnings."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import hpcgate
from tests.conftest import REPO, Server

# top-level modules of the server extra's distributions
SERVER_MODULES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "multipart",
    "pam",
    "argon2",
    "redis",
    "asyncssh",
    "orjson",
    "prometheus_client",
)
SERVER_COMMANDS = (["serve"], ["monitor", "--once"], ["hash-password"])


def _run(*argv: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_the_command_and_the_client_load_no_server_package() -> None:
    """What `hpcgate --help` and `from hpcgate.client import Client` import, in a fresh
    interpreter of the project's own environment (where the server packages ARE there)."""
    probe = (
        "import sys, hpcgate.cli, hpcgate.client\n"
        "from hpcgate.client import Client\n"
        "hpcgate.cli.parser().format_help()\n"
        f"print(' '.join(sorted(m for m in {SERVER_MODULES!r} if m in sys.modules)))\n"
    )
    loaded = _run(sys.executable, "-c", probe)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "", f"server packages loaded: {loaded.stdout}"


def test_the_command_and_the_api_report_the_one_version(local_server: Server) -> None:
    command = _run(sys.executable, "-m", "hpcgate", "--version")
    assert command.stdout.strip() == f"hpcgate {hpcgate.__version__}"
    with local_server.client() as client:
        assert client.get("/openapi.json").json()["info"]["version"] == hpcgate.__version__


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The wheel and the sdist, built from this tree; and what the build printed."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the locked setuptools of this environment builds it, offline
    build = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("hpcgate-*.whl")
    (sdist,) = out.glob("hpcgate-*.tar.gz")
    return wheel, sdist, build.stdout + build.stderr


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_version_the_licence_and_the_split(
    built: tuple[Path, Path, str],
) -> None:
    wheel, sdist, output = built
    assert "Warning" not in output, output  # e.g. SetuptoolsDeprecationWarning (licence)
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        name = next(n for n in in_wheel if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    package = REPO / "src" / "hpcgate"
    data_files = {
        f"hpcgate/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    assert data_files - in_wheel == set(), "files of the package left out of the wheel"
    assert metadata["Version"] == hpcgate.__version__
    assert metadata["License-Expression"] == "BSD-3-Clause"
    requires = metadata.get_all("Requires-Dist") or []
    plain = {r.split(";")[0].split(">")[0].strip() for r in requires if ";" not in r}
    assert plain == {"httpx", "rich"}
    assert any(r.startswith("fastapi") and 'extra == "server"' in r for r in requires)
    assert "server" in (metadata.get_all("Provides-Extra") or [])
    with tarfile.open(sdist) as archive:
        names = {Path(n).relative_to(Path(n).parts[0]).as_posix() for n in archive.getnames()}
    for shipped in (
        "CHANGELOG.md",
        "deploy/nginx/hpcgate.conf",
        "deploy/systemd/hpcgate.service",
        "requirements/server.lock",
        "src/hpcgate/cli.py",
    ):
        assert shipped in names


@pytest.mark.slow
def test_the_client_only_install_has_the_cli_and_library_and_names_the_server_extra(
    built: tuple[Path, Path, str], tmp_path: Path
) -> None:
    wheel, _, _ = built
    venv = tmp_path / "client-venv"
    made = _run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    python, command = venv / "bin" / "python", venv / "bin" / "hpcgate"
    # the client's few dependencies come from pip's cache or the index
    installed = _run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    helped = _run(command, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "login" in helped.stdout, helped.stderr
    version = _run(command, "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"hpcgate {hpcgate.__version__}"
    library = _run(python, "-c", "from hpcgate.client import Client, AsyncClient", cwd=tmp_path)
    assert library.returncode == 0, library.stderr
    for module in ("fastapi", "pydantic", "uvicorn", "asyncssh"):
        absent = _run(python, "-c", f"import {module}", cwd=tmp_path)
        assert absent.returncode != 0, f"{module} is installed with the client alone"

    for argv in SERVER_COMMANDS:
        refused = _run(command, *argv, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "pip install 'hpcgate[server]'" in lines[0]
