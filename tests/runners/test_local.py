"""The local runner, for real: it acts as the user, within limits, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hpcgate.accounts import UnixAccount
from hpcgate.errors import BadRequest, Forbidden, TimedOut
from hpcgate.process import Limits
from hpcgate.runners.containment import Containment, _in_a_job
from hpcgate.runners.local import LocalRunner
from hpcgate.runners.ssh.runner import _IN_A_JOB
from tests.conftest import wait_for
from tests.runners.leftovers import (
    ESCAPES,
    alices,
    assert_nothing_left,
    assert_the_job_still_runs,
    open_descriptors,
    submit_and_detach,
    unique_sleep,
)

LIMITS = Limits(timeout=10, output_bytes=1024 * 1024)


@pytest.fixture
def runner(cluster: None) -> LocalRunner:
    return LocalRunner()


@pytest.fixture
def alice(cluster: None) -> UnixAccount:
    return UnixAccount.lookup("alice")


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_runs_with_the_users_ids_groups_home_and_environment(
    runner: LocalRunner, alice: UnixAccount
) -> None:
    done = run(
        runner.run(
            alice,
            ["sh", "-c", 'id -u; id -g; id -G; pwd; echo "$HOME:$USER:$LOGNAME:$SHELL:$PATH"'],
            limits=LIMITS,
        )
    )
    uid, gid, groups, cwd, env = done.stdout.splitlines()
    assert (int(uid), int(gid)) == (alice.uid, alice.gid)
    assert set(map(int, groups.split())) == set(alice.groups) and len(alice.groups) >= 2
    assert cwd == alice.home
    assert env == f"{alice.home}:alice:alice:/bin/bash:/usr/local/bin:/usr/bin:/bin"


def test_exit_status_stdout_stderr_and_stdin(runner: LocalRunner, alice: UnixAccount) -> None:
    done = run(
        runner.run(alice, ["sh", "-c", "cat; echo oops >&2; exit 7"], limits=LIMITS, stdin=b"in")
    )
    assert (done.returncode, done.stdout, done.stderr) == (7, "in", "oops\n")


def test_the_command_line_goes_through_the_users_shell(
    runner: LocalRunner, alice: UnixAccount
) -> None:
    done = run(runner.run_command_line(alice, "echo $0 | grep -c bash; false", limits=LIMITS))
    assert (done.stdout, done.returncode) == ("1\n", 1)


def test_timeout_kills_the_whole_process_group(runner: LocalRunner, alice: UnixAccount) -> None:
    with pytest.raises(TimedOut, match=r"did not finish within 0\.5 s"):
        run(
            runner.run(alice, ["sh", "-c", "sleep 888.25 & sleep 888.25"], limits=Limits(0.5, 4096))
        )

    def gone() -> bool:
        return subprocess.run(["pgrep", "-f", "sleep 888.25"], capture_output=True).returncode == 1

    assert wait_for(gone, timeout=10, what="the group to be killed")


def test_output_cap_kills_and_says_so(runner: LocalRunner, alice: UnixAccount) -> None:
    with pytest.raises(BadRequest, match="more than 2048 bytes"):
        run(runner.run(alice, ["yes"], limits=Limits(10, 2048)))


def test_a_cancelled_action_leaves_no_orphans(runner: LocalRunner, alice: UnixAccount) -> None:
    async def cancel_midway() -> None:
        task = asyncio.create_task(runner.run(alice, ["sleep", "889.25"], limits=LIMITS))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_midway())
    assert subprocess.run(["pgrep", "-f", "sleep 889.25"], capture_output=True).returncode == 1


def test_missing_program_and_missing_directory(runner: LocalRunner, alice: UnixAccount) -> None:
    with pytest.raises(BadRequest, match="command not found"):
        run(runner.run(alice, ["no-such-program-xyz"], limits=LIMITS))
    with pytest.raises(BadRequest, match="/nonexistent/dir does not exist"):
        run(runner.run(alice, ["true"], limits=LIMITS, cwd="/nonexistent/dir"))


def test_a_program_the_user_may_not_execute_is_forbidden(
    runner: LocalRunner, alice: UnixAccount, public_dir: Path
) -> None:
    program = public_dir / "root-only-tool"
    program.write_text("#!/bin/sh\necho ran\n")
    program.chmod(0o700)  # root may run it, alice may not
    with pytest.raises(Forbidden, match=r"alice may not run .*: Permission denied"):
        run(runner.run(alice, [str(program)], limits=LIMITS))


def test_no_capability_survives_the_switch(runner: LocalRunner, alice: UnixAccount) -> None:
    done = run(runner.run(alice, ["grep", "^Cap", "/proc/self/status"], limits=LIMITS))
    capabilities = dict(line.split(":\t") for line in done.stdout.splitlines())
    assert set(capabilities) >= {"CapInh", "CapPrm", "CapEff", "CapAmb"}
    assert {name: int(mask, 16) for name, mask in capabilities.items() if name != "CapBnd"} == {
        "CapInh": 0,
        "CapPrm": 0,
        "CapEff": 0,
        "CapAmb": 0,
    }


def test_root_is_never_a_runner_account(runner: LocalRunner) -> None:
    with pytest.raises(Forbidden, match="never run as root"):
        run(runner.run(UnixAccount.lookup("root"), ["true"], limits=LIMITS))


def test_without_root_only_the_service_user_is_served(alice: UnixAccount) -> None:
    runner = LocalRunner()
    # as if the service ran as bob (the suite's Python lives under /root, out of bob's reach)
    runner._service_uid, runner._switch_user = pwd.getpwnam("bob").pw_uid, None
    with pytest.raises(Forbidden, match="can act only as that user"):
        run(runner.run(alice, ["true"], limits=LIMITS))


def test_write_file_creates_parents_as_the_user(runner: LocalRunner, alice: UnixAccount) -> None:
    path = Path(alice.home) / "deep" / "er" / "file.sh"
    run(runner.write_file(alice, str(path), b"#!/bin/sh\n", limits=LIMITS))
    assert path.read_bytes() == b"#!/bin/sh\n"
    assert (path.stat().st_uid, path.parent.stat().st_uid) == (alice.uid, alice.uid)
    run(runner.write_file(alice, str(path), b"short", limits=LIMITS))
    assert path.read_bytes() == b"short", "an existing file is replaced, not appended to"


def test_write_file_refusals(runner: LocalRunner, alice: UnixAccount) -> None:
    with pytest.raises(Forbidden, match="Permission denied"):
        run(runner.write_file(alice, "/root/nope.sh", b"x", limits=LIMITS))
    assert not os.path.exists("/root/nope.sh")
    with pytest.raises(BadRequest, match="Is a directory"):
        run(runner.write_file(alice, alice.home, b"x", limits=LIMITS))


# --- containment: nothing an action started outlives it (issue 12) ---------------------


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_finished_command_leaves_nothing_running(
    runner: LocalRunner, alice: UnixAccount, escape: str
) -> None:
    sleep = unique_sleep()
    baseline = open_descriptors()
    line = ESCAPES[escape].format(sleep=sleep) + "\necho started"
    done = run(runner.run_command_line(alice, line, limits=Limits(20, 4096)))
    assert (done.returncode, done.stdout) == (0, "started\n"), "it returns when its shell exits"
    assert_nothing_left(sleep, baseline)


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_timed_out_command_leaves_nothing_running(
    runner: LocalRunner, alice: UnixAccount, escape: str
) -> None:
    sleep = unique_sleep()
    baseline = open_descriptors()
    line = ESCAPES[escape].format(sleep=sleep) + f"\n{sleep}"
    with pytest.raises(TimedOut):
        run(runner.run_command_line(alice, line, limits=Limits(1, 4096)))
    assert_nothing_left(sleep, baseline)


@pytest.mark.parametrize("escape", ESCAPES)
def test_an_abandoned_command_leaves_nothing_running(
    runner: LocalRunner, alice: UnixAccount, escape: str
) -> None:
    sleep = unique_sleep()
    baseline = open_descriptors()
    line = ESCAPES[escape].format(sleep=sleep) + f"\n{sleep}"

    async def client_goes_away() -> None:
        action = asyncio.create_task(runner.run_command_line(alice, line, limits=LIMITS))
        while len(alices(sleep)) < 2:  # both sleeps started
            await asyncio.sleep(0.05)
        action.cancel()
        with pytest.raises(asyncio.CancelledError):
            await action

    run(client_goes_away())
    assert_nothing_left(sleep, baseline)


def test_an_action_may_not_start_hundreds_of_processes(
    runner: LocalRunner, alice: UnixAccount
) -> None:
    sleep = unique_sleep()
    baseline = open_descriptors()
    bomb = f"for i in $(seq 400); do {sleep} & done; wait"
    done = run(runner.run(alice, ["sh", "-c", bomb], limits=Limits(20, 65536, max_processes=50)))
    assert done.returncode != 0 and "fork" in done.stderr, done.stderr[-300:]
    assert_nothing_left(sleep, baseline)


def test_without_cgroups_leftovers_are_still_killed(alice: UnixAccount) -> None:
    fallback = Containment(prlimit=shutil.which("prlimit"))  # as if no cgroup could be made
    runner = LocalRunner(containment=fallback)
    sleep = unique_sleep()
    baseline = open_descriptors()
    line = "\n".join(escape.format(sleep=sleep) for escape in ESCAPES.values())
    done = run(runner.run_command_line(alice, line + "\necho started", limits=Limits(20, 4096)))
    assert (done.returncode, done.stdout) == (0, "started\n")
    assert_nothing_left(sleep, baseline)

    bomb = f"for i in $(seq 400); do {sleep} & done; wait"
    try:
        done = run(runner.run(alice, ["sh", "-c", bomb], limits=Limits(20, 65536, 50)))
        assert done.returncode != 0 and "fork" in done.stderr, done.stderr[-300:]
    except BadRequest as refused:  # RLIMIT_NPROC counts all of alice's processes on the host
        assert "too many processes" in refused.message
    assert_nothing_left(sleep, baseline)


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroups", "no cgroups"])
def test_a_job_the_action_submitted_outlives_the_action(alice: UnixAccount, cgroups: bool) -> None:
    """sbatch hands the action's environment, its marker included, to the job: the kill at
    the action's end must tell the job's processes from the action's, even from what the
    action started under salloc (which carries a job's variables but runs here)."""
    containment = (
        Containment.discover() if cgroups else Containment(prlimit=shutil.which("prlimit"))
    )
    runner = LocalRunner(containment=containment)
    sleep = unique_sleep()
    baseline = open_descriptors()
    done = run(runner.run_command_line(alice, submit_and_detach(sleep), limits=Limits(60, 4096)))
    assert done.returncode == 0, done.stderr
    assert_nothing_left(sleep, baseline)
    assert_the_job_still_runs(done.stdout.strip())


@pytest.mark.serial  # a gateway of another test, starting, would end these cgroups first
def test_what_a_gone_gateway_left_is_ended_and_then_reported_ended(cluster: None) -> None:
    """A keyed submit's retry may take over early only once this says True: every action
    of the gone gateway process is killed and its cgroups are removed."""
    containment = Containment.discover()
    parents = [p for p in (containment.v2_parent, containment.v1_pids_parent) if p]
    if not parents:
        pytest.skip("no usable cgroup on this host")
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = subprocess.Popen(["sleep", "60"])  # what the gone gateway's action left running
    cgroups = [parent / f"{gone.pid}-0" for parent in parents]
    for cgroup in cgroups:
        cgroup.mkdir()
        (cgroup / "cgroup.procs").write_text(str(left.pid))
    try:
        assert not containment.end_actions_of(os.getpid()), "a live gateway's actions stay"
        assert not containment.end_actions_of(gone_elsewhere()), "nothing of it found here"
        containment.end_actions_of(gone.pid)
        assert left.wait(timeout=10) == -9, "killed"
        wait_for(lambda: containment.end_actions_of(gone.pid), timeout=10, what="the cleanup")
        assert not any(cgroup.exists() for cgroup in cgroups)
    finally:
        left.kill()
        for cgroup in cgroups:
            with contextlib.suppress(OSError):
                cgroup.rmdir()


def gone_elsewhere() -> int:
    """A process of this host that has ended without leaving a cgroup here (as a gateway
    of another service unit would, whose actions ran under its own cgroup)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def judged(pids: dict[str, int]) -> tuple[dict[str, bool], dict[str, bool]]:
    """Whether each process is a job's, as the local scan (Python) and the SSH one (sh)
    judge it: they must agree."""
    in_python = {case: _in_a_job(pid) for case, pid in pids.items()}
    in_shell = {
        case: subprocess.run(["sh", "-c", f"{_IN_A_JOB}in_a_job {pid}"]).returncode == 0
        for case, pid in pids.items()
    }
    return in_python, in_shell


def test_a_process_is_a_jobs_only_under_a_job_daemon_running_as_root(public_dir: Path) -> None:
    """What the marker scans (here and on SSH login nodes) spare: a descendant of root's
    slurmstepd; not of a user's process that merely has its name (undumpable too: its
    /proc files are root's), nor of an odd name."""
    programs = public_dir / f"daemons-{os.getpid()}"
    (programs / "python").mkdir(mode=0o755, parents=True)
    programs.chmod(0o755)
    stepd, odd = str(programs / "slurmstepd"), str(programs / "x) 1 (y")
    for copy in (stepd, odd):
        shutil.copy("/bin/sh", copy)
    as_alice = ["runuser", "-u", "alice", "--"]
    # each case: the argv of a daemon that starts the sleep (given as an argv) as alice
    cases: dict[str, Callable[[list[str]], list[str]]] = {
        "job": lambda sleep: [stepd, "-c", f"{shlex.join([*as_alice, *sleep])} & wait"],
        "posing": lambda sleep: [*as_alice, stepd, "-c", f"{shlex.join(sleep)} & wait"],
        "odd name": lambda sleep: [*as_alice, odd, "-c", f"{shlex.join(sleep)} & wait"],
    }
    system_python = Path("/usr/bin/python3")  # not the venv's: alice may not read /root
    if system_python.exists():
        undumpable = str(programs / "python" / "slurmstepd")
        shutil.copy(system_python, undumpable)
        cases["posing, undumpable"] = lambda sleep: [
            *as_alice,
            undumpable,
            "-c",
            "import ctypes, subprocess; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); "  # not dumpable
            f"subprocess.run({sleep!r})",
        ]
    started = {}
    for case, daemon in cases.items():
        sleep = unique_sleep()
        started[case] = (subprocess.Popen(daemon(sleep.split())), sleep)
    try:
        pids = {
            case: int(wait_for(lambda s=sleep: alices(s), what=case)[0])  # type: ignore[misc]
            for case, (_, sleep) in started.items()
        }
        in_python, in_shell = judged(pids)
        assert in_python == in_shell == {case: case == "job" for case in cases}
    finally:
        for process, sleep in started.values():
            subprocess.run(["pkill", "-KILL", "-f", sleep])
            process.wait()


def test_a_process_in_a_slurm_job_cgroup_is_a_jobs(cluster: None) -> None:
    """Under proctrack/cgroup a job's process is in a cgroup slurmd made at the top of a
    hierarchy (found even where hidepid hides slurmstepd); the same names lower down, as
    a user with a delegated subtree could make them, are not a job's."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    mount = next((Path(line.split()[1]) for line in mounts if " cgroup2 " in line), None)
    if mount is None:
        pytest.skip("no cgroup v2 here")
    top = mount / f"slurm-hpcgate-test-{os.getpid()}"
    places = {"job": top / "uid_1001/job_1/step_batch", "lower": top / "x/slurm/uid_1001/job_1"}
    sleeps = {}
    try:
        for case, place in places.items():
            place.mkdir(parents=True)
            sleep = unique_sleep()
            process = subprocess.Popen(["runuser", "-u", "alice", "--", *sleep.split()])
            pid = int(wait_for(lambda s=sleep: alices(s), what=case)[0])  # type: ignore[misc]
            (place / "cgroup.procs").write_text(str(pid))
            sleeps[case] = (process, pid)
        in_python, in_shell = judged({case: pid for case, (_, pid) in sleeps.items()})
        assert in_python == in_shell == {"job": True, "lower": False}
    finally:
        for process, pid in sleeps.values():
            os.kill(pid, signal.SIGKILL)
            process.wait()
        for place in sorted(top.rglob("*"), key=lambda path: -len(path.parts)):
            if place.is_dir():
                place.rmdir()
        top.rmdir()
