"""Real Debian nginx in front of whatever upstream a test gives it, running the shipped
site file of deploy/nginx, rendered with this test's ports and certificate."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, wait_for

SITE = REPO / "deploy" / "nginx" / "hpcgate.conf"
# the placeholders of the shipped site, as its header documents them
SITE_PLACEHOLDERS = (
    "HPCGATE_SERVER_NAME",
    "HPCGATE_UPSTREAM",
    "HPCGATE_HTTPS_LISTEN",
    "HPCGATE_HTTP_LISTEN",
    "HPCGATE_TLS_CERTIFICATE",
    "HPCGATE_TLS_KEY",
)


def need(*commands: str) -> None:
    """Fail (not skip) when a tool scripts/bootstrap installs is missing."""
    for command in commands:
        if shutil.which(command) is None:
            pytest.fail(f"{command} is not installed: run scripts/bootstrap")


@dataclass(frozen=True)
class Certificate:
    certificate: Path
    key: Path

    def trusted(self) -> ssl.SSLContext:
        """A client context that trusts this certificate alone."""
        return ssl.create_default_context(cafile=str(self.certificate))


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1, made here with openssl."""
    need("openssl")
    directory = tmp_path_factory.mktemp("tls")
    made = Certificate(directory / "cert.pem", directory / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(made.key),
            "-out",
            str(made.certificate),
        ],
        check=True,
        capture_output=True,
    )
    return made


def render_site(values: dict[str, str]) -> str:
    """The shipped site with ``values`` for its placeholders, rendered by envsubst as its
    header says (nginx's own $variables are left alone)."""
    need("envsubst")
    assert set(values) == set(SITE_PLACEHOLDERS)
    shell_format = " ".join(f"${{{name}}}" for name in SITE_PLACEHOLDERS)
    rendered = subprocess.run(
        ["envsubst", shell_format],
        stdin=SITE.open(),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **values},
    ).stdout
    unknown = re.findall(r"\$\{HPCGATE_[A-Z_]*\}", rendered)
    assert not unknown, f"placeholders the test does not know of: {unknown}"
    return rendered


@dataclass
class Nginx:
    """A running nginx: ``url`` is the HTTPS site, ``http_url`` the plain-HTTP one."""

    url: str
    http_url: str
    directory: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_nginx(directory: Path, upstream: str, certificate: Certificate) -> Nginx:
    """nginx with the shipped site in front of ``upstream`` (host:port), in ``directory``.

    The wrapper nginx.conf stands for Debian's: the site goes in its http block.
    """
    need("nginx")
    directory.mkdir(parents=True, exist_ok=True)
    https_port, http_port = free_port(), free_port()
    site = directory / "hpcgate-site.conf"
    site.write_text(
        render_site(
            {
                "HPCGATE_SERVER_NAME": "localhost",
                "HPCGATE_UPSTREAM": upstream,
                "HPCGATE_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
                "HPCGATE_HTTP_LISTEN": f"127.0.0.1:{http_port}",
                "HPCGATE_TLS_CERTIFICATE": str(certificate.certificate),
                "HPCGATE_TLS_KEY": str(certificate.key),
            }
        )
    )
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = directory / "nginx.conf"
    config.write_text(
        f"""
user root;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {directory / "access.log"};
{temp}
    include {site};
}}
"""
    )
    checked = subprocess.run(
        ["nginx", "-t", "-p", str(directory), "-c", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        ["nginx", "-p", str(directory), "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "stderr.log").open("wb"),
    )
    running = Nginx(
        f"https://localhost:{https_port}", f"http://127.0.0.1:{http_port}", directory, process
    )

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"nginx exited: {running.error_log()}")
        return _listening(https_port) and _listening(http_port)

    wait_for(up, timeout=15, what="nginx to listen")
    return running


def stop_nginx(nginx: Nginx) -> None:
    nginx.process.terminate()
    try:
        nginx.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        nginx.process.kill()
        nginx.process.wait()
