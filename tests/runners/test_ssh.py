"""The SSH transport against real sshd's on loopback (two login nodes of one machine)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncssh
import pytest

from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError, MachineConfig
from hpcgate.errors import BadRequest, TimedOut, Unavailable
from hpcgate.plugins import BuildContext
from hpcgate.process import Limits
from hpcgate.runners.ssh import CertificateAuthority, SshRunner
from hpcgate.runners.ssh.pool import ConnectionPool, LoginHost, PoolSettings
from hpcgate.runners.ssh.runner import _IN_A_JOB, _kill_script
from tests.conftest import free_port, wait_for
from tests.login_nodes import LoginNodes
from tests.runners.leftovers import (
    ESCAPES,
    alices,
    assert_nothing_left,
    assert_the_job_still_runs,
    open_descriptors,
    submit_and_detach,
    unique_sleep,
)

LIMITS = Limits(timeout=20, output_bytes=1024 * 1024)


@pytest.fixture
def nodes(login_nodes: LoginNodes) -> Iterator[LoginNodes]:
    login_nodes.start_all()
    yield login_nodes
    login_nodes.start_all()  # a test that stopped one leaves both running for the next


def make_runner(
    nodes: LoginNodes, *, validity: float = 600, known_hosts: Path | None = None, **settings: float
) -> SshRunner:
    authority = CertificateAuthority.from_file(nodes.ca_key, validity)
    pool = ConnectionPool(
        authority,
        PoolSettings(known_hosts=known_hosts or nodes.known_hosts, **settings),  # type: ignore[arg-type]
    )
    hosts = [LoginHost("127.0.0.1", port) for port in nodes.ports]
    return SshRunner("cluster", hosts, pool, host_retry_after=60)


@pytest.fixture
def alice() -> UnixAccount:
    return UnixAccount.lookup("alice")


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_runs_as_the_user_and_values_stay_values(
    nodes: LoginNodes, alice: UnixAccount, tmp_path: Path
) -> None:
    runner = make_runner(nodes)
    marker = Path("/tmp") / f"hpcgate-pwned-{time.time_ns()}"
    hostile = [f"$(touch {marker})", f"; touch {marker}", "'quoted' \"double\"", "--x=y", "a\\b"]

    async def body() -> None:
        done = await runner.run(alice, ["printf", "%s\\n", *hostile], limits=LIMITS)
        assert done.stdout.splitlines() == hostile and done.returncode == 0
        who = await runner.run(alice, ["id", "-un"], limits=LIMITS)
        assert who.stdout == "alice\n" and who.stderr == "", "the PID marker is not shown"
        line = await runner.run_command_line(alice, "echo $USER; exit 3", limits=LIMITS)
        assert (line.stdout, line.returncode) == ("alice\n", 3)
        await runner.pool.close()

    run(body())
    assert not marker.exists(), "a value reached a shell"


def test_one_pooled_connection_serves_many_concurrent_requests(
    nodes: LoginNodes, alice: UnixAccount
) -> None:
    runner = make_runner(nodes, max_sessions=4)

    async def body() -> None:
        results = await asyncio.gather(
            *(runner.run(alice, ["echo", str(i)], limits=LIMITS) for i in range(25))
        )
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(25)]
        assert len(runner.pool) == 1, "one connection for one user on one host"
        await runner.pool.close()

    run(body())


def test_a_dead_connection_is_replaced_once_transparently(
    nodes: LoginNodes, alice: UnixAccount
) -> None:
    runner = make_runner(nodes)

    async def body() -> None:
        await runner.run(alice, ["true"], limits=LIMITS)
        for pooled in runner.pool._pooled.values():
            pooled.connection.close()  # as if the network dropped it
        done = await runner.run(alice, ["echo", "again"], limits=LIMITS)
        assert done.stdout == "again\n"
        await runner.pool.close()

    run(body())


def test_timeout_kills_the_remote_process_group(nodes: LoginNodes, alice: UnixAccount) -> None:
    runner = make_runner(nodes)

    async def body() -> None:
        with pytest.raises(TimedOut, match="did not finish within 1 s"):
            await runner.run_command_line(
                alice, "sleep 654.5 & sleep 654.5; echo never", limits=Limits(1, 4096)
            )
        with pytest.raises(BadRequest, match="more than 4096 bytes"):
            await runner.run(alice, ["yes"], limits=Limits(10, 4096))
        await runner.pool.close()

    run(body())

    def gone() -> bool:
        found = subprocess.run(["pgrep", "-u", "alice", "-f", "sleep 654.5"], capture_output=True)
        return found.returncode == 1

    assert wait_for(gone, timeout=10, what="the remote processes to be killed")
    assert (
        subprocess.run(["pgrep", "-u", "alice", "-x", "yes"], capture_output=True).returncode == 1
    )


def test_failover_when_a_login_node_is_down(nodes: LoginNodes, alice: UnixAccount) -> None:
    runner = make_runner(nodes)
    first, second = nodes.ports
    nodes.stop(first)

    async def body() -> None:
        done = await runner.run(alice, ["echo", "still here"], limits=LIMITS)
        assert done.stdout == "still here\n"
        assert LoginHost("127.0.0.1", first) in runner._down, "the dead node is skipped"
        nodes.stop(second)
        # open sessions outlive a stopped sshd; a new connection is what finds both down
        await runner.pool.close()
        with pytest.raises(Unavailable) as raised:
            await runner.run(alice, ["true"], limits=LIMITS)
        message = raised.value.message
        assert "no login node of cluster can be used" in message
        assert f"127.0.0.1:{first}" in message and f"127.0.0.1:{second}" in message
        nodes.start_all()
        done = await runner.run(alice, ["echo", "back"], limits=LIMITS)
        assert done.stdout == "back\n"
        await runner.pool.close()

    run(body())


def test_an_unknown_or_changed_host_key_is_refused(
    nodes: LoginNodes, alice: UnixAccount, tmp_path: Path
) -> None:
    wrong = tmp_path / "known_hosts"
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key = other.with_suffix(".pub").read_text().split()
    wrong.write_text("".join(f"[127.0.0.1]:{p} {key[0]} {key[1]}\n" for p in nodes.ports))
    runner = make_runner(nodes, known_hosts=wrong)
    with pytest.raises(Unavailable, match="host key does not match"):
        run(runner.run(alice, ["true"], limits=LIMITS))
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(Unavailable, match="host key does not match"):
        run(make_runner(nodes, known_hosts=empty).run(alice, ["true"], limits=LIMITS))


def test_certificates_are_short_lived_and_renewed(nodes: LoginNodes, tmp_path: Path) -> None:
    authority = CertificateAuthority.from_file(nodes.ca_key, validity=90)
    certificate = authority.credentials("alice")[1]
    path = tmp_path / "alice-cert.pub"
    certificate.write_certificate(str(path))
    described = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "Principals: \n                alice\n" in described
    valid = re.search(r"Valid: from (\S+) to (\S+)", described)
    assert valid is not None
    start, end = (datetime.fromisoformat(stamp) for stamp in valid.groups())
    assert (end - start).total_seconds() <= 90 + 60  # validity plus the clock-skew margin
    extensions = described.split("Extensions:")[1]
    for forbidden in ("port-forwarding", "agent-forwarding", "X11-forwarding", "permit-pty"):
        assert forbidden not in extensions

    assert authority.credentials("alice")[1] is certificate, "reused while fresh"
    key, cert, _ = authority._issued["alice"]
    authority._issued["alice"] = (key, cert, time.time() + 20)  # a third of its life left
    assert authority.credentials("alice")[1] is not certificate, "renewed before expiry"


def test_a_certificate_for_alice_never_logs_in_as_bob(nodes: LoginNodes) -> None:
    authority = CertificateAuthority.from_file(nodes.ca_key, validity=300)
    key, certificate = authority.credentials("alice")

    async def as_bob() -> None:
        await asyncssh.connect(
            "127.0.0.1",
            nodes.ports[0],
            username="bob",
            client_keys=[(key, certificate)],
            known_hosts=str(nodes.known_hosts),
            agent_path=None,
            config=None,
        )

    with pytest.raises(asyncssh.PermissionDenied):
        run(as_bob())


def test_a_key_not_signed_by_the_ca_is_refused(nodes: LoginNodes, tmp_path: Path) -> None:
    rogue = CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"), validity=300)
    runner = make_runner(nodes)
    runner.pool.authority = rogue
    with pytest.raises(Unavailable, match="refused the gateway's certificate for alice"):
        run(runner.run(UnixAccount.lookup("alice"), ["true"], limits=LIMITS))


def test_nobody_listening_is_a_clear_error(alice: UnixAccount, nodes: LoginNodes) -> None:
    authority = CertificateAuthority.from_file(nodes.ca_key, 300)
    pool = ConnectionPool(authority, PoolSettings(known_hosts=nodes.known_hosts, connect_timeout=3))
    runner = SshRunner("lonely", [LoginHost("127.0.0.1", free_port())], pool)
    with pytest.raises(Unavailable, match=r"no login node of lonely can be used: .*cannot connect"):
        run(runner.run(alice, ["true"], limits=LIMITS))


def test_idle_connections_are_closed(nodes: LoginNodes, alice: UnixAccount) -> None:
    runner = make_runner(nodes, idle_timeout=0.4)

    async def body() -> None:
        await runner.run(alice, ["true"], limits=LIMITS)
        (pooled,) = runner.pool._pooled.values()
        await asyncio.sleep(1.5)  # the reaper looks every idle_timeout / 2
        assert len(runner.pool) == 0 and pooled.connection.is_closed()
        assert (await runner.run(alice, ["echo", "reopened"], limits=LIMITS)).stdout == "reopened\n"
        await runner.pool.close()

    run(body())


def test_the_connection_cap_evicts_idle_connections_and_refuses_when_all_are_busy(
    nodes: LoginNodes,
) -> None:
    runner = make_runner(nodes, max_connections=1)
    alice, bob = UnixAccount.lookup("alice"), UnixAccount.lookup("bob")

    async def body() -> None:
        await runner.run(alice, ["true"], limits=LIMITS)
        await runner.run(bob, ["true"], limits=LIMITS)  # alice's idle connection makes room
        assert len(runner.pool) == 1
        busy = asyncio.create_task(runner.run(bob, ["sleep", "2"], limits=LIMITS))
        await asyncio.sleep(0.5)
        with pytest.raises(Unavailable, match="all busy"):
            await runner.run(alice, ["true"], limits=LIMITS)
        assert (await busy).returncode == 0
        await runner.pool.close()

    run(body())


# --- containment on the login node: nothing an action started outlives it (issue 12) ---


async def warm(runner: SshRunner, alice: UnixAccount) -> int:
    """The gateway's descriptors once alice's pooled connection is open."""
    await runner.run(alice, ["true"], limits=LIMITS)
    return open_descriptors()


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_finished_remote_command_leaves_nothing_running(
    nodes: LoginNodes, alice: UnixAccount, escape: str
) -> None:
    runner = make_runner(nodes)
    sleep = unique_sleep()
    line = ESCAPES[escape].format(sleep=sleep) + "\necho started"

    async def body() -> int:
        baseline = await warm(runner, alice)
        done = await runner.run_command_line(alice, line, limits=Limits(20, 4096))
        assert (done.returncode, done.stdout) == (0, "started\n"), "it returns when its shell exits"
        assert_nothing_left(sleep, baseline)
        await runner.close()
        return baseline

    run(body())


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_timed_out_or_abandoned_remote_command_leaves_nothing_running(
    nodes: LoginNodes, alice: UnixAccount, escape: str
) -> None:
    runner = make_runner(nodes)
    sleep = unique_sleep()
    line = ESCAPES[escape].format(sleep=sleep) + f"\n{sleep}"

    async def body() -> None:
        baseline = await warm(runner, alice)
        with pytest.raises(TimedOut):
            await runner.run_command_line(alice, line, limits=Limits(1, 4096))
        assert_nothing_left(sleep, baseline)

        action = asyncio.create_task(runner.run_command_line(alice, line, limits=LIMITS))
        while len(alices(sleep)) < 2:  # both sleeps started
            await asyncio.sleep(0.05)
        action.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await action
        assert_nothing_left(sleep, baseline)
        await runner.close()

    run(body())


def test_a_job_the_remote_action_submitted_outlives_the_action(
    nodes: LoginNodes, alice: UnixAccount
) -> None:
    """This login node also runs jobs: the job carries the action's marker (sbatch hands
    the environment on), and the kill at the action's end must spare it, but not what
    the action started under salloc on the login node."""
    runner = make_runner(nodes)
    sleep = unique_sleep()

    async def body() -> str:
        baseline = await warm(runner, alice)
        line = submit_and_detach(sleep)
        done = await runner.run_command_line(alice, line, limits=Limits(60, 4096))
        assert done.returncode == 0, done.stderr
        assert_nothing_left(sleep, baseline)
        await runner.close()
        return done.stdout.strip()

    assert_the_job_still_runs(run(body()))


def test_a_remote_action_may_not_start_hundreds_of_processes(
    nodes: LoginNodes, alice: UnixAccount
) -> None:
    runner = make_runner(nodes)
    sleep = unique_sleep()
    bomb = f"for i in $(seq 400); do {sleep} & done; wait"

    async def body() -> None:
        baseline = await warm(runner, alice)
        limits = Limits(20, 65536, max_processes=50)
        done = await runner.run(alice, ["sh", "-c", bomb], limits=limits)
        assert done.returncode != 0 and "fork" in done.stderr, done.stderr[-300:]
        assert_nothing_left(sleep, baseline)
        await runner.close()

    run(body())


def test_close_ends_every_connection_and_may_be_called_twice(
    nodes: LoginNodes, alice: UnixAccount
) -> None:
    runner = make_runner(nodes, idle_timeout=300)

    async def body() -> None:
        baseline = open_descriptors()
        await runner.run(alice, ["true"], limits=LIMITS)
        (pooled,) = runner.pool._pooled.values()
        await runner.close()
        await runner.close()
        assert pooled.connection.is_closed() and len(runner.pool) == 0
        assert runner.pool._reaper is None
        assert open_descriptors() == baseline

    run(body())


def machine_config(nodes: LoginNodes, **ssh: object) -> MachineConfig:
    settings = {
        "hosts": [f"127.0.0.1:{port}" for port in nodes.ports],
        "known_hosts": nodes.known_hosts,
        "ca_key": nodes.ca_key,
    } | ssh
    return MachineConfig(runner="ssh", ssh=settings)


def test_from_config_shares_one_authority_per_gateway(nodes: LoginNodes) -> None:
    context = BuildContext()
    first = SshRunner.from_config("ln3", machine_config(nodes), context)
    second = SshRunner.from_config("ln4", machine_config(nodes), context)
    other_gateway = SshRunner.from_config("ln3", machine_config(nodes), BuildContext())
    assert first.pool.authority is second.pool.authority
    assert other_gateway.pool.authority is not first.pool.authority, "no process-wide cache"
    assert [str(host) for host in first.hosts] == [f"127.0.0.1:{p}" for p in nodes.ports]


def test_from_config_names_the_wrong_setting_and_the_fix(nodes: LoginNodes, tmp_path: Path) -> None:
    def refused(**ssh: object) -> str:
        with pytest.raises(ConfigError) as raised:
            SshRunner.from_config("ln3", machine_config(nodes, **ssh), BuildContext())
        message = str(raised.value)
        assert "\n" not in message
        return message

    missing = tmp_path / "nope"
    assert refused(known_hosts=missing).startswith(
        f"machines.ln3.ssh.known_hosts: {missing} does not exist; create it with ssh-keyscan"
    )
    assert refused(ca_key=missing).startswith(
        f"machines.ln3.ssh.ca_key: {missing} does not exist; make one with ssh-keygen"
    )
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    assert refused(ca_key=garbage).startswith(
        f"machines.ln3.ssh.ca_key: {garbage} is not an unencrypted SSH private key"
    )
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()  # even root cannot read a directory as a key
    assert "machines.ln3.ssh.ca_key: cannot read" in refused(ca_key=unreadable)


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "busybox"])
def test_the_kill_script_is_plain_posix_shell(shell: str) -> None:
    """The login node runs it with ``sh``, which may be any of these: it must parse, and
    its job test must walk a live process to the top (this test's own is no job's)."""
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"no {shell} here")
    argv = [program, "sh"] if shell == "busybox" else [program]
    script = shlex.split(_kill_script("123", "abc"))[2]  # sh -c '<script>'
    assert subprocess.run([*argv, "-n", "-c", script]).returncode == 0
    check = subprocess.run(
        [*argv, "-c", f"{_IN_A_JOB}in_a_job {os.getpid()}"], capture_output=True, text=True
    )
    assert (check.returncode, check.stderr) == (1, "")
