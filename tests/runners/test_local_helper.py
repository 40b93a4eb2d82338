"""The local-helper transport, for real: the local runner's guarantees hold, through one
long-lived helper per user that holds that user's identity and nothing more."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from hpcgate import metrics
from hpcgate.accounts import UnixAccount
from hpcgate.errors import Forbidden, NotWritten, TimedOut, Unavailable
from hpcgate.process import Completed, Limits
from hpcgate.runners.local_helper import HelperRunner
from tests.conftest import wait_for
from tests.runners.leftovers import alices, assert_nothing_left, open_descriptors, unique_sleep

# The local runner's own tests, run again here against this transport (the `runner`
# fixture below replaces theirs): identity, limits, containment and refusals.
from tests.runners.test_local import (  # noqa: F401
    test_a_cancelled_action_leaves_no_orphans,
    test_a_finished_command_leaves_nothing_running,
    test_a_program_the_user_may_not_execute_is_forbidden,
    test_a_timed_out_command_leaves_nothing_running,
    test_an_abandoned_command_leaves_nothing_running,
    test_an_action_may_not_start_hundreds_of_processes,
    test_exit_status_stdout_stderr_and_stdin,
    test_missing_program_and_missing_directory,
    test_no_capability_survives_the_switch,
    test_output_cap_kills_and_says_so,
    test_root_is_never_a_runner_account,
    test_runs_with_the_users_ids_groups_home_and_environment,
    test_the_command_line_goes_through_the_users_shell,
    test_timeout_kills_the_whole_process_group,
    test_write_file_creates_parents_as_the_user,
    test_write_file_refusals,
)

LIMITS = Limits(timeout=10, output_bytes=1024 * 1024)


@pytest.fixture
def runner(cluster: None) -> Iterator[HelperRunner]:
    made = HelperRunner()
    # alice's helper is up before the reused tests count the gateway's descriptors: it
    # lives on between actions by design (each asyncio.run replaces it, one for one).
    asyncio.run(made.run(UnixAccount.lookup("alice"), ["true"], limits=LIMITS))
    yield made
    asyncio.run(made.close())


@pytest.fixture
def alice(cluster: None) -> UnixAccount:
    return UnixAccount.lookup("alice")


@pytest.fixture
def bob(cluster: None) -> UnixAccount:
    return UnixAccount.lookup("bob")


def _ids(pid: int) -> tuple[int, int, set[int]]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    uids = {int(word) for word in status["Uid"].split()}
    gids = {int(word) for word in status["Gid"].split()}
    assert len(uids) == 1 and len(gids) == 1, "real, effective, saved and fs ids all alike"
    return uids.pop(), gids.pop(), {int(word) for word in status["Groups"].split()}


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_each_user_has_a_helper_of_their_own_with_only_their_identity(
    runner: HelperRunner, alice: UnixAccount, bob: UnixAccount
) -> None:
    async def scenario() -> dict[int, int]:
        try:
            await runner.run(alice, ["true"], limits=LIMITS)
            await runner.run(bob, ["true"], limits=LIMITS)
            await runner.run(alice, ["true"], limits=LIMITS)
            helpers = runner.helpers
            for account in (alice, bob):
                uid, gid, groups = _ids(helpers[account.uid])
                assert (uid, gid, groups) == (account.uid, account.gid, set(account.groups))
                capabilities = Path(f"/proc/{helpers[account.uid]}/status").read_text()
                assert "CapEff:\t0000000000000000" in capabilities
            return helpers
        finally:
            await runner.close()

    helpers = asyncio.run(scenario())
    assert len(set(helpers.values())) == 2, "never shared between users"
    assert wait_for(
        lambda: all(map(_gone, helpers.values())), timeout=10, what="the helpers to stop"
    )


def test_a_script_write_starts_no_process(runner: HelperRunner, alice: UnixAccount) -> None:
    path = Path(alice.home) / "helper-test" / "job.sh"

    async def scenario() -> float:
        try:
            await runner.run(alice, ["true"], limits=LIMITS)  # the helper is up
            before = metrics.PROCESSES_SPAWNED._value.get()
            await runner.write_file(alice, str(path), b"#!/bin/bash\ntrue\n", limits=LIMITS)
            return float(metrics.PROCESSES_SPAWNED._value.get() - before)
        finally:
            await runner.close()

    try:
        assert asyncio.run(scenario()) == 0
        assert path.read_bytes() == b"#!/bin/bash\ntrue\n"
        assert (path.stat().st_uid, path.stat().st_gid) == (alice.uid, alice.gid)
    finally:
        path.unlink(missing_ok=True)
        path.parent.rmdir()


def test_a_fifo_is_refused_not_waited_on(runner: HelperRunner, alice: UnixAccount) -> None:
    fifo = Path(alice.home) / "helper-test.fifo"
    os.mkfifo(fifo)
    os.chown(fifo, alice.uid, alice.gid)

    async def scenario() -> None:
        try:
            await runner.write_file(alice, str(fifo), b"x", limits=Limits(5, 4096))
        finally:
            await runner.close()

    try:
        with pytest.raises(Exception, match="cannot write"):
            asyncio.run(scenario())
    finally:
        fifo.unlink()


def test_the_program_is_born_in_the_actions_cgroup_and_the_helper_goes_home(
    runner: HelperRunner, alice: UnixAccount
) -> None:
    async def scenario() -> tuple[str, str, str]:
        try:
            done = await runner.run(alice, ["cat", "/proc/self/cgroup"], limits=LIMITS)
            helper = runner.helpers[alice.uid]
            return done.stdout, Path(f"/proc/{helper}/cgroup").read_text(), str(os.getpid())
        finally:
            await runner.close()

    program, helper, _ = asyncio.run(scenario())
    assert "hpcgate.actions/" in program
    assert "hpcgate.actions/" not in helper


def test_idle_helpers_are_reaped(cluster: None, alice: UnixAccount) -> None:
    runner = HelperRunner(idle_seconds=0.4)

    async def scenario() -> int:
        try:
            await runner.run(alice, ["true"], limits=LIMITS)
            pid = runner.helpers[alice.uid]
            while alice.uid in runner.helpers:
                await asyncio.sleep(0.05)
            return pid
        finally:
            await runner.close()

    pid = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert wait_for(lambda: _gone(pid), timeout=10, what="the idle helper to exit")


def test_the_number_of_helpers_is_capped(
    cluster: None, alice: UnixAccount, bob: UnixAccount
) -> None:
    runner = HelperRunner(max_helpers=1)

    async def scenario() -> tuple[int, dict[int, int], str]:
        try:
            await runner.run(alice, ["true"], limits=LIMITS)
            alices_helper = runner.helpers[alice.uid]
            done = await runner.run(bob, ["id", "-un"], limits=LIMITS)
            return alices_helper, runner.helpers, done.stdout
        finally:
            await runner.close()

    alices_helper, helpers, output = asyncio.run(scenario())
    assert output == "bob\n"
    assert list(helpers) == [bob.uid], "alice's idle helper made way for bob's"
    assert wait_for(lambda: _gone(alices_helper), timeout=10, what="the evicted helper to exit")


def test_an_action_stopped_before_its_output_is_read_leaves_nothing_running(
    runner: HelperRunner, alice: UnixAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client gone between the program's start and the reading of its output (the
    helper answered; the pipes are being set up): the action is killed all the same."""
    sleep = unique_sleep()
    baseline = open_descriptors()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reached = asyncio.Event()

        async def held(*args: object, **kwargs: object) -> None:
            reached.set()
            await asyncio.sleep(3600)

        monkeypatch.setattr(loop, "connect_read_pipe", held)
        action = asyncio.create_task(
            runner.run_command_line(alice, f"{sleep} &\n{sleep}", limits=LIMITS)
        )
        await reached.wait()
        while len(alices(sleep)) < 2:  # the program runs
            await asyncio.sleep(0.05)
        action.cancel()
        with pytest.raises(asyncio.CancelledError):
            await action

    asyncio.run(scenario())
    assert_nothing_left(sleep, baseline)


def test_a_dead_helper_is_replaced(runner: HelperRunner, alice: UnixAccount) -> None:
    async def scenario() -> tuple[int, int, str]:
        try:
            await runner.run(alice, ["true"], limits=LIMITS)
            first = runner.helpers[alice.uid]
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0)
            while alice.uid in runner.helpers:
                await asyncio.sleep(0.05)
            done = await runner.run(alice, ["id", "-un"], limits=LIMITS)
            return first, runner.helpers[alice.uid], done.stdout
        finally:
            await runner.close()

    first, second, output = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert output == "alice\n" and first != second


def test_an_action_inherits_its_memory_limit_from_a_helper_started_under_it(
    runner: HelperRunner, alice: UnixAccount
) -> None:
    # the program's soft and hard limit, its parent (the helper that spawned it) and the
    # parent's own limit
    probe = [
        "sh",
        "-c",
        'ulimit -S -v; ulimit -H -v; echo $PPID; grep "Max address space" /proc/$PPID/limits',
    ]

    async def scenario() -> list[tuple[int | None, list[str]]]:
        seen = []
        try:
            for limit in (2 << 30, 3 << 30, 256 << 20, None, 2 << 30):
                limits = Limits(timeout=10, output_bytes=1 << 20, max_memory_bytes=limit)
                done = await runner.run(alice, probe, limits=limits)
                assert done.ok, done.stderr
                soft, hard, parent, parents_limit = done.stdout.splitlines()
                seen.append((limit, [soft, hard, parent, parents_limit.split()[3]]))
            return seen
        finally:
            await runner.close()

    (two, three, small, unbounded, two_again) = [found for _, found in asyncio.run(scenario())]
    for limit, found in ((2 << 30, two), (3 << 30, three)):  # born under it: inherited
        kib, parents = str(limit // 1024), str(limit)
        assert found[:2] == [kib, kib] and found[3] == parents, "the helper carries it"
    assert two_again == two, "the same helper again"
    assert len({two[2], three[2], unbounded[2]}) == 3, "a helper per limit"
    # below 1 GiB the helper is not bounded: each program starts through prlimit
    assert small[:2] == [str(256 << 10)] * 2 and small[3] == "unlimited"
    assert small[2] == unbounded[2], "the user's unbounded helper"
    assert unbounded[:2] == ["unlimited"] * 2 and unbounded[3] == "unlimited"


def test_helpers_still_starting_count_against_the_cap(
    cluster: None, alice: UnixAccount, bob: UnixAccount, caplog: pytest.LogCaptureFixture
) -> None:
    runner = HelperRunner(max_helpers=1)
    caplog.set_level(logging.INFO, logger="hpcgate.runners.local_helper")

    async def scenario() -> list[str]:
        try:
            done = await asyncio.gather(  # both need a helper of their own at once
                runner.run(alice, ["id", "-un"], limits=LIMITS),
                runner.run(bob, ["id", "-un"], limits=LIMITS),
            )
            return [each.stdout for each in done]
        finally:
            await runner.close()

    outputs = asyncio.run(scenario())
    assert outputs == ["alice\n", "bob\n"], "the one over the cap ran the local way"
    started = [r for r in caplog.records if r.getMessage().startswith("started the helper")]
    assert len(started) == 1, "one helper, never two"


STAND_IN = """
import os, time
def run(argv, env, cwd):
    if argv[1] == "decline":
        return None
    if argv[1] == "fail":
        raise RuntimeError("broken stand-in")
    if argv[1] == "cat":
        with open(argv[2]) as file:
            return 0, file.read(), ""
    if argv[1] == "slow":
        time.sleep(float(argv[2]))
        if len(argv) > 3:
            open(argv[3], "w").close()
    return 3, f"{os.getuid()} {cwd} {env['HOME']} {' '.join(argv[1:])}\\n", "said\\n"
"""


@pytest.fixture
def stand_in(cluster: None, public_dir: Path) -> Iterator[HelperRunner]:
    """A runner whose ``echo`` is answered by a stand-in module in the user's helper."""
    module = public_dir / "stand_in.py"
    module.write_text(STAND_IN)
    module.chmod(0o644)
    made = HelperRunner()
    assert made.take_stand_ins({"echo": str(module)})
    yield made
    asyncio.run(made.close())


def test_a_stand_in_answers_in_the_helper_as_the_user(
    stand_in: HelperRunner, alice: UnixAccount
) -> None:
    async def scenario() -> None:
        spawned = metrics.PROCESSES_SPAWNED._value.get()
        await stand_in.run(alice, ["true"], limits=LIMITS)  # the helper is up
        before = metrics.PROCESSES_SPAWNED._value.get()
        done = await stand_in.run(alice, ["echo", "a", "b c"], limits=LIMITS)
        assert (done.returncode, done.stderr) == (3, "said\n")
        assert done.stdout == f"{alice.uid} {alice.home} {alice.home} a b c\n"
        assert done.argv[0] == "/usr/bin/echo", "the program as resolved, as a spawn gets it"
        assert metrics.PROCESSES_SPAWNED._value.get() == before, "nothing started"
        assert before > spawned
        # declined: the program itself runs
        declined = await stand_in.run(alice, ["echo", "decline"], limits=LIMITS)
        assert (declined.returncode, declined.stdout) == (0, "decline\n")
        assert metrics.PROCESSES_SPAWNED._value.get() == before + 1

    asyncio.run(scenario())


def test_a_write_and_the_call_that_reads_it_are_one_request(
    stand_in: HelperRunner, alice: UnixAccount
) -> None:
    path = f"{alice.home}/helper-then-{os.getpid()}/job.sh"

    def write_then_run(target: str, data: bytes, argv: list[str]) -> Awaitable[Completed]:
        return stand_in.write_then_run(
            alice, target, data, argv, write_limits=LIMITS, limits=LIMITS
        )

    assert stand_in.joins_write_and_run("echo", LIMITS, LIMITS)
    assert not stand_in.joins_write_and_run("true", LIMITS, LIMITS), "no stand-in"

    async def scenario() -> None:
        # the helper's first two requests at once: the first carries the stand-in's source
        # and its write fails (nothing is called), the second comes without the source
        failing = write_then_run("/root/job.sh", b"x", ["echo", "cat", "/root/job.sh"])
        fine = write_then_run(path, b"1\n", ["echo", "cat", path])
        refused, done = await asyncio.gather(failing, fine, return_exceptions=True)
        assert isinstance(refused, NotWritten), refused
        assert isinstance(refused.error, Forbidden)
        assert "alice may not write /root/job.sh: Permission denied" in str(refused.error)
        assert isinstance(done, Completed), done
        assert (done.returncode, done.stdout) == (0, "1\n"), "the source was loaded first"
        (helper,) = stand_in._helpers.values()
        requests, spawned = helper._numbers, metrics.PROCESSES_SPAWNED._value.get()
        done = await write_then_run(path, b"#!/bin/bash\n", ["echo", "cat", path])
        assert (done.returncode, done.stdout) == (0, "#!/bin/bash\n"), "read what was written"
        assert helper._numbers == requests + 1, "one request for both"
        assert metrics.PROCESSES_SPAWNED._value.get() == spawned, "nothing started"
        # declined: the file is written all the same, then the program runs
        declined = await write_then_run(path, b"2\n", ["echo", "decline"])
        assert (declined.returncode, declined.stdout) == (0, "decline\n")
        assert Path(path).read_bytes() == b"2\n"
        assert Path(path).stat().st_uid == alice.uid
        # a program without a stand-in: written alone, then run, as on every transport
        with pytest.raises(NotWritten):
            await write_then_run("/root/x", b"", ["true"])
        ran = await write_then_run(path, b"3\n", ["cat", path])
        assert ran.stdout == "3\n"
        # the call has its own limit from the moment the file is written
        short = Limits(timeout=1.0, output_bytes=1024)
        with pytest.raises(TimedOut):
            await stand_in.write_then_run(
                alice, path, b"4\n", ["echo", "slow", "3"], write_limits=LIMITS, limits=short
            )
        assert Path(path).read_bytes() == b"4\n"

    try:
        asyncio.run(scenario())
    finally:
        Path(path).unlink(missing_ok=True)
        Path(path).parent.rmdir()


def test_a_write_that_does_not_finish_is_its_own_timeout_and_nothing_is_called(
    stand_in: HelperRunner, alice: UnixAccount, public_dir: Path
) -> None:
    # the helper stopped (as if stuck in a file system) before it reads the request: the
    # write's own limit ends it, with a write's error, and the call never comes
    where = public_dir / "stuck-write"
    where.mkdir(mode=0o777)
    where.chmod(0o777)
    called = where / "called"

    async def scenario() -> None:
        await stand_in.run(alice, ["true"], limits=LIMITS)  # the helper is up
        (helper,) = stand_in._helpers.values()
        os.kill(helper.pid, signal.SIGSTOP)
        write = Limits(timeout=1.0, output_bytes=1024)
        argv = ["echo", "slow", "0", str(called)]
        with pytest.raises(NotWritten) as late:
            await stand_in.write_then_run(
                alice, f"{alice.home}/stuck.sh", b"x", argv, write_limits=write, limits=LIMITS
            )
        assert isinstance(late.value.error, TimedOut)
        assert f"writing {alice.home}/stuck.sh did not finish within 1 s" in str(late.value)
        assert _gone(helper), "the stuck helper was stopped"
        ran = await stand_in.run(alice, ["echo", "after"], limits=LIMITS)  # a new helper
        assert ran.returncode == 3

    asyncio.run(scenario())
    assert not called.exists(), "the call came after all"
    Path(f"{alice.home}/stuck.sh").unlink(missing_ok=True)


def test_a_stand_in_that_fails_or_hangs_is_an_error_and_never_answers_late(
    stand_in: HelperRunner, alice: UnixAccount
) -> None:
    async def scenario() -> None:
        with pytest.raises(Unavailable, match="broken stand-in"):
            await stand_in.run(alice, ["echo", "fail"], limits=LIMITS)
        short = Limits(timeout=1.0, output_bytes=1024)
        slow = asyncio.ensure_future(stand_in.run(alice, ["echo", "slow", "3"], limits=short))
        await asyncio.sleep(0.2)
        # while one call is stuck, the same helper answers others (calls have threads)
        assert (await stand_in.run(alice, ["echo", "quick"], limits=LIMITS)).returncode == 3
        assert (await stand_in.run(alice, ["true"], limits=LIMITS)).returncode == 0
        stuck = stand_in.helpers[alice.uid]
        with pytest.raises(TimedOut):
            await slow
        # past its limit the call must not complete later (a submit would land after
        # its retry): the helper went with it, and the next action gets a new one
        assert wait_for(lambda: _gone(stuck), timeout=5, what="the stuck helper to go")
        assert (await stand_in.run(alice, ["echo", "after"], limits=LIMITS)).returncode == 3
        assert stand_in.helpers[alice.uid] != stuck

    asyncio.run(scenario())


def test_many_calls_at_once_are_each_answered(stand_in: HelperRunner, alice: UnixAccount) -> None:
    # more than the socket holds at once (each call carries 16 KiB), and more than the
    # call threads: every frame must arrive whole and every call get its own answer
    async def scenario() -> None:
        words = [f"{n}-{'x' * 16384}" for n in range(400)]
        done = await asyncio.gather(
            *(stand_in.run(alice, ["echo", word], limits=LIMITS) for word in words)
        )
        assert [result.stdout.split()[-1] for result in done] == words
        assert {result.returncode for result in done} == {3}

    asyncio.run(scenario())


def test_an_abandoned_call_never_completes_later(
    stand_in: HelperRunner, alice: UnixAccount, public_dir: Path
) -> None:
    # a keyed submit cut at its attempt limit, or whose client went away, must not reach
    # the scheduler afterwards: its retry could find nothing yet and submit again
    late = public_dir / "late"
    late.mkdir(mode=0o777)
    late.chmod(0o777)

    async def scenario() -> None:
        await stand_in.run(alice, ["true"], limits=LIMITS)
        helper = stand_in.helpers[alice.uid]
        argv = ["echo", "slow", "1.5", str(late / "done")]
        call = asyncio.ensure_future(stand_in.run(alice, argv, limits=LIMITS))
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert _gone(helper), "the helper went with its call"
        await asyncio.sleep(2)

    asyncio.run(scenario())
    assert not (late / "done").exists(), "the abandoned call completed"


def test_a_helper_stopped_while_its_socket_is_full_leaves_nothing_waiting(
    stand_in: HelperRunner, alice: UnixAccount
) -> None:
    async def scenario() -> None:
        await stand_in.run(alice, ["true"], limits=LIMITS)
        (helper,) = stand_in._helpers.values()
        os.kill(helper.pid, signal.SIGSTOP)  # it reads nothing: the socket fills up
        loop = asyncio.get_running_loop()
        sock = helper._sock.fileno()
        data = b"x" * (1 << 20)
        writes = [
            asyncio.ensure_future(
                stand_in.write_file(alice, f"{alice.home}/full-{n}", data, limits=LIMITS)
            )
            for n in range(4)
        ]
        await asyncio.sleep(0.3)
        assert not any(write.done() for write in writes)
        await asyncio.wait_for(helper.stop(), 5)
        results = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 5)
        assert all(isinstance(result, Unavailable) for result in results), results
        watched = loop._selector.get_map()  # type: ignore[attr-defined]
        assert sock not in watched, "the event loop still watches the closed socket's number"

    asyncio.run(scenario())
    for n in range(4):
        Path(f"{alice.home}/full-{n}").unlink(missing_ok=True)
