"""Fixtures shared by the whole suite: the real cluster, a real gateway process, clients.

Tests run as root against the one-machine Slurm cluster of scripts/cluster and its real
users alice and bob. Nothing here sleeps a fixed time: helpers poll until a condition
holds or a deadline passes.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from hpcgate.config import Config, load_config
from tests.login_nodes import LoginNodes

if TYPE_CHECKING:
    from tests.redis_server import PrivateRedis

REPO = Path(__file__).resolve().parents[1]
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
REDIS_URL = "redis://127.0.0.1:6379/0"  # the machine's own Redis
T = TypeVar("T")
_STARTED = pytest.StashKey[float]()


# Fixtures that need this test machine: root and the Slurm cluster, Redis, the sshd's.
MACHINE_FIXTURES = frozenset({"cluster", "prefix", "private_redis", "login_nodes"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop a daemon are ``serial`` too, and serial tests run last, so the rest
    never see a sick cluster (scripts/test runs them in a pass of their own, after the
    others' parallel one). A test that uses the machine, directly or through another
    fixture, is marked ``cluster``: ``pytest -m "not cluster"`` is the fast tier, which
    needs none of it."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        backends = list(callspec.params.values()) if callspec is not None else []
        if MACHINE_FIXTURES.intersection(getattr(item, "fixturenames", ())) or "redis" in backends:
            item.add_marker(pytest.mark.cluster)
        if item.get_closest_marker("disruptive") is not None:
            item.add_marker(pytest.mark.serial)
    items.sort(key=lambda item: item.get_closest_marker("serial") is not None)


def wait_for(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(interval)


# Touched by the cluster fixture: the run then cancels the test users' jobs at its end.
CLUSTER_USED = Path(tempfile.gettempdir()) / "hpcgate-tests-used-the-cluster"


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STARTED] = time.time()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Every test user's job is cancelled once a run that used the cluster is over: by
    the one process that ran the tests, or by pytest-xdist's controller after all its
    workers (a worker's end is not the run's: the others may still have jobs running)."""
    if hasattr(session.config, "workerinput"):
        return
    try:
        used = CLUSTER_USED.stat().st_mtime >= session.config.stash[_STARTED] - 1
    except (OSError, KeyError):
        used = False
    if used and shutil.which("scancel"):
        for user in PASSWORDS:
            try:
                subprocess.run(["scancel", f"--user={user}"], capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:  # a dead controller: nothing to cancel there
                print(f"\nscancel --user={user} did not answer in 60 s")


@pytest.fixture(scope="session")
def cluster() -> None:
    """The real Slurm cluster, up and taking jobs."""
    if os.geteuid() != 0:
        pytest.fail("the suite runs as root: it starts Slurm and acts as alice and bob")
    # pytest-xdist's workers each ask at once: one brings it up, the others find it up
    with open(Path(tempfile.gettempdir()) / "hpcgate-cluster-up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([str(REPO / "scripts" / "cluster"), "up"], check=True)
    CLUSTER_USED.touch()


@pytest.fixture(scope="session")
def public_dir() -> Iterator[Path]:
    """A scratch directory every test user can read (pytest's own tmp is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="hpcgate-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running ``hpcgate serve`` process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def config(self) -> Config:
        """The configuration this gateway runs with, read from its own TOML file."""
        return load_config(self.config_path)

    def client(self, **kwargs: Any) -> httpx.Client:
        # not reused past 4 s: the gateway closes a connection idle for 5 s
        kwargs.setdefault("limits", httpx.Limits(keepalive_expiry=4.0))
        return httpx.Client(base_url=f"{self.url}/api", timeout=90, **kwargs)

    def login(self, user: str) -> httpx.Client:
        """A client logged in as ``user`` with a bearer token."""
        client = self.client()
        answer = client.post("/auth", data={"username": user, "password": PASSWORDS[user]})
        assert answer.status_code == 200, answer.text
        client.headers["Authorization"] = f"Bearer {answer.json()['output']['token']}"
        client.cookies.clear()
        return client


def start_server(config_text: str, workdir: Path, *, env: dict[str, str] | None = None) -> Server:
    """Start a gateway with ``config_text`` (and extra environment ``env``); wait until it
    answers."""
    port = free_port()
    config = workdir / f"hpcgate-{port}.toml"
    config.write_text(config_text)
    log_path = workdir / f"hpcgate-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcgate",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY_TEST_CANARY": CANARY, **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, config)

    def answering() -> bool:
        if process.poll() is not None:
            pytest.fail(f"hpcgate serve exited:\n{server.log()}")
        try:
            return httpx.get(f"{server.url}/api/auth", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answering, timeout=30, interval=0.05, what="the gateway to answer")
    return server


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


RENAMED = {"sbatch": "yhbatch", "squeue": "yhq", "sacct": "yhacct", "scancel": "yhcancel"}
CANARY = "hpcgate-service-secret-canary"


def gateway_config(
    public_dir: Path, transport: str, login_nodes: LoginNodes | None, *, submit: str = "sbatch"
) -> str:
    """The test gateway: ln3 as deployed, plus machines with tight limits and renamed tools.

    With ``transport = "ssh"`` every machine reaches its login nodes over SSH (the two
    sshd's of ``login_nodes``) instead of running locally: the same tests cover both;
    ``"local-helper"`` runs them through one long-lived helper per user, and with
    ``submit = "rpc"`` its helpers submit through libslurm instead of starting sbatch.
    """
    bin_dir = public_dir / "bin"
    bin_dir.mkdir(exist_ok=True)
    for real, renamed in RENAMED.items():
        link = bin_dir / renamed
        if not link.exists():
            link.symlink_to(shutil.which(real) or f"/usr/bin/{real}")
    slow = bin_dir / "slowbatch"  # sbatch that takes its time: for clients that hang up
    slow.write_text('#!/bin/sh\nsleep 2\nexec sbatch "$@"\n')
    slow.chmod(0o755)
    runner = f'runner = "{transport}"'
    if submit != "sbatch":
        runner += f'\noptions = {{ submit = "{submit}" }}'
    if transport == "ssh":
        assert login_nodes is not None
        runner = f'runner = "ssh"\nssh = {login_nodes.ssh_section()}'
    return f"""
[auth]
backend = "pam"
failed_login_delay = 0.05

[limits]
scheduler_timeout = 30

[monitor]
account = "hpcmon"
interval = 2              # tests wait for snapshots: sooner than production's 5 s

[machines.ln3]
description = "as deployed"
{runner}

[machines.tight]
description = "small limits, for timeout and output-cap tests"
{runner}
limits = {{ timeout = 1.5, output_bytes = 4096, max_upload_bytes = 65536, \
max_memory_bytes = 268435456 }}

[machines.renamed]
description = "Slurm's commands under Tianhe-2 style names"
{runner}
path = "{bin_dir}:/usr/local/bin:/usr/bin:/bin"
commands = {{ {", ".join(f'{k} = "{v}"' for k, v in RENAMED.items())} }}

[machines.slow]
description = "sbatch takes two seconds"
{runner}
path = "{bin_dir}:/usr/local/bin:/usr/bin:/bin"
commands = {{ sbatch = "slowbatch" }}
"""


@pytest.fixture(scope="session")
def login_nodes(cluster: None, public_dir: Path) -> Iterator[LoginNodes]:
    """Two real sshd's on loopback: two login nodes of one machine."""
    directory = public_dir / "login-nodes"
    directory.mkdir()
    nodes = LoginNodes(directory, [free_port(), free_port()])
    nodes.start_all()
    yield nodes
    nodes.stop_all()


@pytest.fixture(scope="session", params=["local", "ssh"])
def server(request: pytest.FixtureRequest, cluster: None, public_dir: Path) -> Iterator[Server]:
    """One real gateway process per transport; tests using it run once for each."""
    transport = request.param
    nodes = request.getfixturevalue("login_nodes") if transport == "ssh" else None
    running = start_server(gateway_config(public_dir, transport, nodes), public_dir)
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def local_server(cluster: None, public_dir: Path) -> Iterator[Server]:
    """A gateway on the local transport only, for tests of what sits above the transport."""
    running = start_server(gateway_config(public_dir, "local", None), public_dir)
    yield running
    stop_server(running)


@pytest.fixture
def alice(server: Server) -> Iterator[httpx.Client]:
    client = server.login("alice")
    yield client
    client.close()


@pytest.fixture
def bob(server: Server) -> Iterator[httpx.Client]:
    client = server.login("bob")
    yield client
    client.close()


@pytest.fixture
def anonymous(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def ok_output(response: httpx.Response) -> Any:
    """The ``output`` of a successful envelope; fails with the server's error otherwise."""
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "OK" and body["status_code"] == 200 and body["error"] == "", body
    return body["output"]


def error_of(response: httpx.Response, status: int) -> str:
    """The ``error`` of a failed envelope whose HTTP status and status_code are ``status``."""
    body = response.json()
    assert response.status_code == status, body
    assert body["status"] == "ERROR" and body["status_code"] == status, body
    assert body["error"], body
    error: str = body["error"]
    return error


def settled(request: Callable[[], httpx.Response], *, timeout: float = 30) -> httpx.Response:
    """The answer to ``request`` once it is not "accounting is catching up" (503): the
    tests' jobs end all the time, and while their records wait for slurmdbd a job the
    controller does not know is answered "try again", never a 404 that may be wrong."""

    def answered() -> httpx.Response | None:
        answer = request()
        if answer.status_code == 503 and "accounting is catching up" in answer.text:
            return None
        return answer

    return wait_for(answered, timeout=timeout, what="an answer not waiting for accounting")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix no other test uses; its keys are deleted afterwards."""
    import redis

    name = f"hpcgate-test-{secrets.token_hex(4)}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{name}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own (the test may stop and start it)."""
    from tests.redis_server import PrivateRedis

    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
