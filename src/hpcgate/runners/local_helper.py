"""The ``local-helper`` transport: the local runner, with one long-lived helper per user.

Each action of the ``local`` runner starts ``sh`` (to enter the action's cgroups as root),
then ``chroot --userspec`` (to become the user), then the program: three executions per
action, and a whole ``dd`` process to write a job script. This transport keeps one small
helper process per user (:mod:`hpcgate.runners.userhelper`), started on first use
through that same ``chroot --userspec`` path and so holding exactly the user's uid, gid
and groups. The helper writes files itself and starts programs with ``posix_spawn``;
a command is then one execution, a script write none.

Containment is unchanged: the gateway (root) makes the action's cgroups as the local
runner does, moves the *helper* into them for the instant of one spawn (the program is
born inside, before it can run anything) and back to its own cgroups right after, one
spawn at a time per helper. The cgroups stay root's: the program cannot leave them, and
the action's end, its time limit, its output cap or the client going away kills all of
it through ``cgroup.kill`` exactly as in the local runner. On a host without usable
cgroups this transport falls back to the local runner's own spawning.

A helper is started under the address-space limit of the actions it serves
(``prlimit --as``, set as root before the switch to the user), which every program it
starts inherits; an action under another limit goes to another helper of the user.

Helpers are never shared between users (keyed by uid, gid and groups), capped in number
(``machines.NAME.options.helpers``, default 64; past it an idle one is stopped, or the
action runs the ``local`` way), and stopped after ``options.helper_idle`` seconds
(default 300) without an action. A helper dies with the gateway's end of its socket.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno as errno_codes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from hpcgate import metrics
from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError, MachineConfig
from hpcgate.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    NotWritten,
    TimedOut,
    Unavailable,
)
from hpcgate.plugins import BuildContext
from hpcgate.process import Completed, Limits, timed_out
from hpcgate.runners import userhelper
from hpcgate.runners.containment import ACTION_MARKER, ActionScope, Containment, write_control
from hpcgate.runners.local import DEFAULT_PATH, LocalRunner
from hpcgate.runners.pump import READ_CHUNK, pump

log = logging.getLogger(__name__)

DEFAULT_HELPERS = 64
DEFAULT_IDLE = 300.0
_START_TIMEOUT = 10.0
_HELPER_PYTHON = "/usr/bin/python3"
HELPER_MIN_ADDRESS_SPACE = 1 << 30
"""Below this address-space limit a helper is not started under it (its own Python needs
room); its actions are then each started through prlimit."""
_Key = tuple[int, int, tuple[int, ...], int | None]
"""A helper's owner (uid, gid, groups) and the address-space limit it was started with."""


class _Write(NamedTuple):
    """A file a helper writes before its call (a job script before its submit)."""

    user: str
    path: str
    data: bytes
    limits: Limits


def _write_error(user: str, path: str, answer: Mapping[str, Any]) -> GatewayError:
    """The error for a helper's failed write (the operating system's reason)."""
    reason = str(answer["reason"])
    if answer["errno"] in (errno_codes.EACCES, errno_codes.EPERM, errno_codes.EROFS):
        return Forbidden(f"{user} may not write {path}: {reason}")
    return BadRequest(f"cannot write {path}: {reason}")


class HelperGone(Exception):
    """The helper exited or stopped answering (it is replaced on the next action)."""


class _Helper:
    """The gateway's side of one user's helper process."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        sock: socket.socket,
        memory_limit: int | None = None,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.memory_limit = memory_limit
        """The RLIMIT_AS (soft and hard) the helper, and so every program it starts, has."""
        self._sock = sock
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._written: dict[int, asyncio.Future[None]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._numbers = 0
        self.spawning = asyncio.Lock()
        self._sending = asyncio.Lock()
        self._sends: set[asyncio.Future[None]] = set()
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.stand_ins_sent: set[str] = set()
        """The stand-ins whose source this helper has (sent with a first call)."""
        self.home_cgroups = _cgroups_of(self.pid)
        self._loop = asyncio.get_running_loop()
        self._reader = asyncio.ensure_future(self._read_answers())

    @property
    def alive(self) -> bool:
        """Answering, on the event loop that is running now."""
        return not self._reader.done() and self._loop is asyncio.get_running_loop()

    def kill_now(self) -> None:
        """Kill the helper without waiting (its event loop may be gone)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._sock.close()

    async def request(
        self,
        message: dict[str, Any],
        payload: bytes = b"",
        fds: Sequence[int] = (),
        *,
        written: asyncio.Future[None] | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its answer; ``written`` is set when the helper
        says the file of a write with a call is written (before the call's answer)."""
        if not self.alive:
            raise HelperGone("the helper has exited")
        self._numbers += 1
        message["id"] = self._numbers
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[self._numbers] = answer
        if written is not None:
            self._written[self._numbers] = written
        body = json.dumps(message).encode()
        frame = userhelper.FRAME.pack(len(body), len(payload)) + body
        # One frame at a time, each sent whole even if its request is cancelled (a frame
        # cut or interleaved with another would garble every later one), so the send may
        # outlive this call: it sends copies of the descriptors, its own to close.
        sending = asyncio.ensure_future(self._send(frame, payload, [os.dup(fd) for fd in fds]))
        self._sends.add(sending)
        sending.add_done_callback(self._sends.discard)
        try:
            try:
                await asyncio.shield(sending)
            except asyncio.CancelledError:
                if sending.cancelled():  # the helper was stopped, not this request
                    raise HelperGone("the helper was stopped") from None
                raise
            return await answer
        except OSError as exc:
            raise HelperGone(f"the helper's socket failed: {exc.strerror}") from None
        finally:
            self._requests.pop(message["id"], None)
            self._written.pop(message["id"], None)

    async def _send(self, frame: bytes, payload: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        sock = self._sock.fileno()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(_int_array(fds)))]
        try:
            async with self._sending:
                sent: int | None = None
                while sent is None:  # the descriptors go with the frame's first bytes
                    with contextlib.suppress(BlockingIOError):
                        sent = self._sock.sendmsg([frame, payload], ancillary if fds else [])
                    if sent is None:  # the helper is behind: wait until it reads
                        await self._writable(sock)
                if sent < len(frame) + len(payload):  # the rest once the helper reads
                    await loop.sock_sendall(self._sock, (frame + payload)[sent:])
        finally:
            for copy in fds:
                os.close(copy)

    async def _writable(self, sock: int) -> None:
        """Wait until the socket takes more, or the helper has gone (HelperGone)."""
        loop = asyncio.get_running_loop()
        writable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(sock, ready)
        try:
            await asyncio.wait({writable, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_writer(sock)
        if self._reader.done():
            raise HelperGone("the helper has exited")

    def forget(self, pid: int) -> None:
        """Drop what is kept about ``pid`` (its action is over)."""
        self._exits.pop(pid, None)

    def exit_of(self, pid: int) -> asyncio.Future[int]:
        """The exit status of ``pid``, a program this helper started (set once it ends)."""
        return self._exits.setdefault(pid, asyncio.get_running_loop().create_future())

    async def _read_answers(self) -> None:
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        try:
            while True:
                chunk = await loop.sock_recv(self._sock, 65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= userhelper.FRAME.size:
                    size, _ = userhelper.FRAME.unpack_from(buffer)
                    end = userhelper.FRAME.size + size
                    if len(buffer) < end:
                        break
                    self._answer(json.loads(buffer[userhelper.FRAME.size : end]))
                    del buffer[:end]
        except OSError:
            pass
        finally:
            gone = HelperGone("the helper has exited")
            pending: list[asyncio.Future[Any]] = [
                *self._requests.values(),
                *self._written.values(),
                *self._exits.values(),
            ]
            for future in pending:
                if not future.done():
                    future.set_exception(gone)
                    future.exception()  # retrieved: a waiter may already have gone

    def _answer(self, message: dict[str, Any]) -> None:
        if "exit" in message:
            ended = self.exit_of(int(message["exit"]))
            if not ended.done():
                ended.set_result(int(message["status"]))
            return
        if "written" in message:
            wrote = self._written.get(int(message["id"]))
            if wrote is not None and not wrote.done():
                wrote.set_result(None)
            return
        waiting = self._requests.get(int(message["id"]))
        if waiting is not None and not waiting.done():
            waiting.set_result(message)

    async def stop(self) -> None:
        """Stop the helper (the programs it started belong to their actions' scopes).

        Whatever waits on its socket is ended before the socket is closed: a descriptor
        number the event loop still watched could be another action's next."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        sends = list(self._sends)
        for sending in sends:
            sending.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        self._sock.close()
        await self.process.wait()


class HelperRunner(LocalRunner):
    """The local runner with one long-lived helper per user (see the module's docstring)."""

    def __init__(
        self,
        *,
        path: str = DEFAULT_PATH,
        environment: dict[str, str] | None = None,
        containment: Containment | None = None,
        max_helpers: int = DEFAULT_HELPERS,
        idle_seconds: float = DEFAULT_IDLE,
    ) -> None:
        super().__init__(path=path, environment=environment, containment=containment)
        if max_helpers < 1 or idle_seconds <= 0:
            raise ConfigError("options.helpers must be at least 1 and helper_idle positive")
        self._containment_in_use = containment or self._containment
        self.max_helpers = max_helpers
        self.idle_seconds = idle_seconds
        self._helpers: dict[_Key, _Helper] = {}
        self._starting: dict[_Key, asyncio.Future[_Helper]] = {}
        self._reaper: asyncio.TimerHandle | None = None
        self._stopping: set[asyncio.Future[None]] = set()
        self._python = shutil.which(_HELPER_PYTHON) or sys.executable
        self._source = Path(userhelper.__file__).read_text()
        self._stand_ins: dict[str, tuple[str, str]] = {}
        """program -> (the stand-in's name, its source: read here, as root, once)"""

    def take_stand_ins(self, stand_ins: Mapping[str, str]) -> bool:
        self._stand_ins = {
            program: (path, Path(path).read_text()) for program, path in stand_ins.items()
        }
        if self._stand_ins and not self._usable():
            log.warning(
                "%s are not answered in helpers on this host (no usable cgroups, or not "
                "root): the programs themselves run",
                ", ".join(self._stand_ins),
            )
        return True

    @classmethod
    def from_config(cls, name: str, machine: MachineConfig, context: BuildContext) -> HelperRunner:
        """A helper runner for ``machines.<name>``: the local settings, plus ``options``
        ``helpers`` (most helpers at once) and ``helper_idle`` (seconds)."""
        containment = context.shared("local-containment", Containment.discover)
        try:
            max_helpers = int(machine.options.get("helpers", DEFAULT_HELPERS))
            idle = float(machine.options.get("helper_idle", DEFAULT_IDLE))
        except (TypeError, ValueError):
            raise ConfigError(
                f"machines.{name}.options: helpers and helper_idle must be numbers"
            ) from None
        return cls(
            path=machine.path or DEFAULT_PATH,
            environment=machine.environment,
            containment=containment,
            max_helpers=max_helpers,
            idle_seconds=idle,
        )

    @property
    def helpers(self) -> dict[int, int]:
        """uid -> pid of each running helper (for tests and diagnostics; a user with
        helpers under several memory limits shows one of them)."""
        return {key[0]: helper.pid for key, helper in self._helpers.items() if helper.alive}

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        helpers, self._helpers = list(self._helpers.values()), {}
        loop = asyncio.get_running_loop()
        for helper in helpers:
            if helper._loop is not loop:
                helper.kill_now()
        await asyncio.gather(
            *(helper.stop() for helper in helpers if helper._loop is loop), return_exceptions=True
        )

    # helpers: started on first use, capped, reaped when idle

    def _usable(self) -> bool:
        return self._switch_user is not None and bool(self._containment_in_use.v2_parent)

    async def _helper(
        self, account: UnixAccount, memory_limit: int | None = None
    ) -> _Helper | None:
        """The account's helper for actions under ``memory_limit``, started if need be;
        None when the cap is reached."""
        if account.uid == 0:
            raise Forbidden("actions never run as root")
        inherited = self._inherited_limit(memory_limit)
        key = (account.uid, account.gid, tuple(account.groups or (account.gid,)), inherited)
        helper = self._helpers.get(key)
        if helper is not None and helper.alive:
            return helper
        if helper is not None:
            del self._helpers[key]
            if helper._loop is asyncio.get_running_loop():
                await helper.stop()
            else:
                helper.kill_now()
        starting = self._starting.get(key)
        if starting is None:
            # helpers still starting count too; checked again after each eviction's wait
            while len(self._helpers) + len(self._starting) >= self.max_helpers:
                if not await self._evict_one():
                    return None
            starting = self._starting.get(key)  # started by another action meanwhile?
        if starting is None:
            starting = asyncio.ensure_future(self._start(account, inherited))
            self._starting[key] = starting
            starting.add_done_callback(lambda done: self._started(key, done))
        helper = await asyncio.shield(starting)
        self._schedule_reaping()
        return helper

    def _started(self, key: _Key, starting: asyncio.Future[_Helper]) -> None:
        """Move a helper from starting to running in one step, so that it always counts
        against the cap."""
        self._starting.pop(key, None)
        if not starting.cancelled() and starting.exception() is None:
            self._helpers[key] = starting.result()

    def _inherited_limit(self, memory_limit: int | None) -> int | None:
        """The address-space limit a helper for actions under ``memory_limit`` is started
        with, so that its programs inherit it instead of each starting through prlimit
        (0.6 ms an action here); None when they must be started through it (no prlimit on
        the host, or a limit too small for the helper's own Python)."""
        prlimit = self._containment_in_use.prlimit
        if memory_limit is None or prlimit is None or memory_limit < HELPER_MIN_ADDRESS_SPACE:
            return None
        return memory_limit

    async def _start(self, account: UnixAccount, memory_limit: int | None) -> _Helper:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        argv = [self._python, "-I", "-S", "-c", self._source, str(theirs.fileno())]
        environment = account.environment(self._path)
        command = self._as_user(account, self._python, argv)
        if memory_limit is not None:  # set as root before the switch: the user cannot raise it
            prlimit = self._containment_in_use.prlimit
            assert prlimit is not None
            command = [prlimit, f"--as={memory_limit}:{memory_limit}", "--", *command]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                cwd="/",
                env=environment,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        metrics.PROCESSES_SPAWNED.inc()
        helper = _Helper(process, ours, memory_limit)
        log.info("started the helper of %s (pid %d)", account.name, helper.pid)
        return helper

    async def _evict_one(self) -> bool:
        idle = [item for item in self._helpers.items() if item[1].in_flight == 0]
        if not idle:
            return False
        key, helper = min(idle, key=lambda item: item[1].last_used)
        del self._helpers[key]
        await helper.stop()
        return True

    def _schedule_reaping(self) -> None:
        if self._reaper is None:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.idle_seconds / 4, self._reap_idle)

    def _reap_idle(self) -> None:
        self._reaper = None
        now = time.monotonic()
        for key, helper in list(self._helpers.items()):
            if helper.in_flight == 0 and now - helper.last_used > self.idle_seconds:
                del self._helpers[key]
                stopping = asyncio.ensure_future(helper.stop())
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)
        if self._helpers:
            self._schedule_reaping()

    # actions

    async def write_file(
        self, account: UnixAccount, path: str, data: bytes, *, limits: Limits
    ) -> None:
        if not self._usable():
            return await super().write_file(account, path, data, limits=limits)
        helper = await self._helper(account, limits.max_memory_bytes)
        if helper is None:
            return await super().write_file(account, path, data, limits=limits)
        helper.in_flight += 1
        try:
            async with asyncio.timeout(limits.timeout):
                answer = await helper.request({"op": "write", "path": path}, data)
        except TimeoutError:
            await helper.stop()  # stuck in the file system: it must not take more requests
            raise TimedOut(f"writing {path} did not finish within {limits.timeout:g} s") from None
        except HelperGone as exc:
            raise Unavailable(f"the helper writing {path} exited ({exc}); try again") from None
        finally:
            helper.in_flight -= 1
            helper.last_used = time.monotonic()
        if "errno" in answer:
            raise _write_error(account.name, path, answer)

    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        return await self._run(account, argv, limits, stdin, cwd)

    def joins_write_and_run(self, program: str, write_limits: Limits, limits: Limits) -> bool:
        """With a stand-in for ``program`` (a submit through libslurm), the script's write and
        the call are one request to the user's helper."""
        same_helper = write_limits.max_memory_bytes == limits.max_memory_bytes
        return program in self._stand_ins and same_helper and self._usable()

    async def write_then_run(
        self,
        account: UnixAccount,
        path: str,
        data: bytes,
        argv: Sequence[str],
        *,
        write_limits: Limits,
        limits: Limits,
        cwd: str | None = None,
    ) -> Completed:
        if not self.joins_write_and_run(argv[0], write_limits, limits):
            return await super().write_then_run(
                account, path, data, argv, write_limits=write_limits, limits=limits, cwd=cwd
            )
        write = _Write(account.name, path, data, write_limits)
        return await self._run(account, argv, limits, None, cwd, write)

    async def _write_first(self, account: UnixAccount, write: _Write | None) -> None:
        """Write ``write`` on its own (NotWritten if that fails): the program runs after."""
        if write is not None:
            try:
                await self.write_file(account, write.path, write.data, limits=write.limits)
            except GatewayError as exc:
                raise NotWritten(exc) from exc

    async def _run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        limits: Limits,
        stdin: bytes | None,
        cwd: str | None,
        write: _Write | None = None,
    ) -> Completed:
        """``run``, after ``write`` if one is given (NotWritten if it fails: nothing runs)."""
        if not self._usable():
            await self._write_first(account, write)
            return await super().run(account, argv, limits=limits, stdin=stdin, cwd=cwd)
        environment = account.environment(self._path) | self._extra_environment
        program = shutil.which(argv[0], path=environment["PATH"])
        if program is None:
            await self._write_first(account, write)
            raise BadRequest(f"{argv[0]}: command not found on this machine")
        helper = await self._helper(account, limits.max_memory_bytes)
        if helper is None:
            await self._write_first(account, write)
            return await super().run(account, argv, limits=limits, stdin=stdin, cwd=cwd)
        workdir = cwd or (account.home if os.path.isdir(account.home) else "/")
        helper.in_flight += 1
        try:
            stand_in = self._stand_ins.get(argv[0])
            if stand_in is not None and helper.memory_limit == limits.max_memory_bytes:
                answered, spent = await self._answer_in(
                    helper, stand_in, [program, *argv[1:]], environment, workdir, limits, write
                )
                if answered is not None:
                    return answered
                # declined: the program runs in what is left of the action's time
                limits = replace(limits, timeout=max(limits.timeout - spent, 0.1))
            else:
                await self._write_first(account, write)
            return await self._run_in(
                helper, account, program, argv, environment, workdir, limits, stdin
            )
        except HelperGone as exc:
            raise Unavailable(f"the helper running {argv[0]} exited ({exc}); try again") from None
        finally:
            helper.in_flight -= 1
            helper.last_used = time.monotonic()

    async def _answer_in(
        self,
        helper: _Helper,
        stand_in: tuple[str, str],
        argv: list[str],
        environment: dict[str, str],
        workdir: str,
        limits: Limits,
        write: _Write | None = None,
    ) -> tuple[Completed | None, float]:
        """``argv``'s outcome from its stand-in in the helper, or None when the program
        itself must run, and the seconds the call took. No process is started, so there
        is nothing to contain; the action's environment carries no marker (nothing is
        left to find). With ``write``, the helper writes that file first, in the same
        request, says so, and only then calls: the write has its own limit (NotWritten
        past it or when it fails), the call ``limits.timeout`` from then on."""
        name, source = stand_in
        message: dict[str, Any] = {"op": "call", "module": name, "argv": argv}
        message |= {"env": environment, "cwd": workdir}
        if name not in helper.stand_ins_sent:  # frames arrive in order: once is enough
            message["source"] = source
            helper.stand_ins_sent.add(name)
        payload = b""
        written: asyncio.Future[None] | None = None
        if write is not None:
            message = {"op": "write", "path": write.path, "then": message}
            payload, written = write.data, asyncio.get_running_loop().create_future()
        answering = asyncio.ensure_future(helper.request(message, payload, written=written))

        def writing() -> _Write | None:
            """The write, until the helper has said it is done."""
            return write if written is not None and not written.done() else None

        started = time.monotonic()
        try:
            if (pending := writing()) is not None and written is not None:
                first: set[asyncio.Future[Any]] = {written, answering}
                async with asyncio.timeout(pending.limits.timeout):
                    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                started = time.monotonic()
            async with asyncio.timeout(limits.timeout):
                answer = await answering
        except TimeoutError:
            # Like a program killed at its limit: the call must not reach the scheduler
            # later (a retry would find nothing yet and submit again), so the helper
            # goes, its thread with it. Whatever reached the scheduler before stays.
            answering.cancel()
            await asyncio.shield(helper.stop())
            if (pending := writing()) is not None:
                late = f"writing {pending.path} did not finish within {pending.limits.timeout:g} s"
                raise NotWritten(TimedOut(late)) from None
            raise timed_out(argv, limits) from None
        except HelperGone as exc:
            helper.stand_ins_sent.discard(name)
            if (pending := writing()) is not None:
                reason = f"the helper writing {pending.path} exited ({exc}); try again"
                raise NotWritten(Unavailable(reason)) from None
            raise Unavailable(f"the outcome of {argv[0]} is unknown: {exc}") from None
        except BaseException:
            # cut (a keyed submit's attempt limit) or its client gone: as a killed
            # program, it must not complete later either
            answering.cancel()
            await asyncio.shield(helper.stop())
            raise
        spent = time.monotonic() - started
        if answer.get("stage") == "write":  # nothing was called (its stand-in is loaded)
            assert write is not None
            raise NotWritten(_write_error(write.user, write.path, answer))
        if answer.get("declined"):
            return None, spent
        if "errno" in answer:
            helper.stand_ins_sent.discard(name)  # if it did not load, the next call resends it
            raise Unavailable(f"{argv[0]} failed in the user's helper: {answer['reason']}")
        metrics.STAND_IN_CALLS.inc()
        done = Completed(
            tuple(argv), int(answer["status"]), str(answer["stdout"]), str(answer["stderr"])
        )
        return done, spent

    async def _run_in(
        self,
        helper: _Helper,
        account: UnixAccount,
        program: str,
        argv: Sequence[str],
        environment: dict[str, str],
        workdir: str,
        limits: Limits,
        stdin: bytes | None,
    ) -> Completed:
        scope = self._containment_in_use.start(limits.max_processes, limits.max_memory_bytes)
        environment[ACTION_MARKER] = scope.marker
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        stdout_read, stdout_write = os.pipe2(os.O_CLOEXEC)
        stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
        theirs = (stdin_read, stdout_write, stderr_write)
        bounded = [program, *argv[1:]]
        if helper.memory_limit != limits.max_memory_bytes:  # not inherited from the helper
            bounded = scope.limited(bounded, nproc=False)  # RLIMIT_AS
        message = {"op": "spawn", "argv": bounded, "env": environment, "cwd": workdir}
        # Shielded: once the helper was asked, it must be back home before anything else,
        # and a program it started must be in the scope that is killed.
        spawning = asyncio.ensure_future(_spawn_inside(helper, scope.cgroups, message, theirs))
        try:
            answer = await asyncio.shield(spawning)
        except BaseException:
            await _finished(spawning)  # the program, if any, is in the scope: then kill it
            for fd in (stdin_write, stdout_read, stderr_read):
                os.close(fd)
            await asyncio.shield(scope.kill())
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        if "errno" in answer:
            for fd in (stdin_write, stdout_read, stderr_read):
                os.close(fd)
            await scope.kill()
            raise _spawn_error(account, argv, workdir, answer)
        pid = int(answer["pid"])
        try:
            return await self._pump(
                helper, pid, scope, argv, limits, stdin, (stdin_write, stdout_read, stderr_read)
            )
        finally:
            helper.forget(pid)

    async def _pump(
        self,
        helper: _Helper,
        pid: int,
        scope: ActionScope,
        argv: Sequence[str],
        limits: Limits,
        stdin: bytes | None,
        pipes: tuple[int, int, int],
    ) -> Completed:
        loop = asyncio.get_running_loop()
        stdin_write, stdout_read, stderr_read = pipes
        scope.leader = pid
        metrics.PROCESSES_SPAWNED.inc()
        exit_status = helper.exit_of(pid)
        stdout = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
        stderr = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
        transports: list[asyncio.BaseTransport] = []
        files = [os.fdopen(fd, "rb", buffering=0) for fd in (stdout_read, stderr_read)]
        try:
            for file, reader in zip(files, (stdout, stderr), strict=True):
                transport, _ = await loop.connect_read_pipe(
                    lambda reader=reader: asyncio.StreamReaderProtocol(reader),  # type: ignore[misc]
                    file,
                )
                transports.append(transport)
        except BaseException:
            # Stopped (its client gone) before pump() owns the action: the program is
            # running already, and must not outlive the request.
            for opened in transports:
                opened.close()
            for file in files:
                file.close()
            os.close(stdin_write)
            await asyncio.shield(scope.kill())
            raise
        stdin_open = [True]

        def close_stdin() -> None:
            if stdin_open[0]:
                stdin_open[0] = False
                os.close(stdin_write)

        async def feed() -> None:
            try:
                if stdin:
                    await _write_all(stdin_write, stdin)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the program exited without reading all of it; its status says the rest
            finally:
                close_stdin()

        def release() -> None:
            for transport in transports:
                transport.close()
            close_stdin()

        async def exited() -> int:
            return await asyncio.shield(exit_status)

        try:
            returncode, out, err = await pump(
                argv,
                limits,
                stdout=stdout,
                stderr=stderr,
                feed=feed,
                exited=exited,
                kill=scope.kill,
                release=release,
            )
        except HelperGone:
            raise Unavailable(f"the helper running {argv[0]} exited; try again") from None
        return Completed(
            argv=tuple(argv),
            returncode=returncode,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
        )


async def _finished(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` has ended, however often the waiter is cancelled meanwhile
    (the caller re-raises what stopped it)."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})


def _spawn_error(
    account: UnixAccount, argv: Sequence[str], workdir: str, answer: dict[str, Any]
) -> Exception:
    code, reason = int(answer["errno"]), str(answer["reason"])
    if answer.get("stage") == "cwd":
        if code == errno_codes.ENOENT:
            return BadRequest(f"the directory {workdir} does not exist")
        return Forbidden(f"{account.name} may not enter {workdir}: {reason}")
    if code == errno_codes.ENOENT:
        return BadRequest(f"{argv[0]}: command not found on this machine")
    if code in (errno_codes.EACCES, errno_codes.EPERM):
        return Forbidden(f"{account.name} may not run {argv[0]}: {reason}")
    return BadRequest(f"cannot start {argv[0]} as {account.name}: {reason}")


async def _spawn_inside(
    helper: _Helper, cgroups: Sequence[Path], message: dict[str, Any], fds: Sequence[int]
) -> dict[str, Any]:
    """Ask ``helper`` to spawn, with the helper inside ``cgroups`` for that instant."""
    async with helper.spawning:
        _move(helper.pid, cgroups)
        try:
            return await helper.request(message, fds=fds)
        finally:
            _move(helper.pid, helper.home_cgroups)


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the pipe ``fd`` without blocking the event loop."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


def _move(pid: int, cgroups: Sequence[Path]) -> None:
    """Move process ``pid`` into each cgroup (as root: the cgroups stay root's)."""
    for cgroup in cgroups:
        write_control(cgroup / "cgroup.procs", str(pid))


def _cgroups_of(pid: int) -> list[Path]:
    """The cgroups (v2, and v1 pids) ``pid`` is in now: where the helper goes back to."""
    mine: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as listing:
        for line in listing:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            mine[controllers] = path
    found: list[Path] = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, kind, options, *_ = line.split()
            if kind == "cgroup2" and "" in mine:
                found.append(Path(point) / mine[""].lstrip("/"))
            elif kind == "cgroup" and "pids" in options.split(","):
                found.extend(
                    Path(point) / path.lstrip("/")
                    for c, path in mine.items()
                    if "pids" in c.split(",")
                )
    return found


def _int_array(fds: Sequence[int]) -> bytes:
    return array.array("i", fds).tobytes()
