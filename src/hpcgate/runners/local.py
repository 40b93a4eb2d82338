"""The local transport: actions run on this host, as the user, via setuid children."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import cast

from hpcgate import metrics
from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError, MachineConfig
from hpcgate.errors import BadRequest, Forbidden, GatewayError
from hpcgate.files import os_error
from hpcgate.plugins import BuildContext
from hpcgate.process import Completed, Limits, timed_out
from hpcgate.runners.base import Runner
from hpcgate.runners.containment import ACTION_MARKER, ActionScope, Containment
from hpcgate.runners.pump import READ_CHUNK, pump

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class LocalRunner(Runner):
    """Runs actions on the gateway host itself.

    As root, every action starts as ``chroot --userspec=UID:GID --groups=... --skip-chdir /
    program ...``: coreutils' chroot, given the old root, changes no root and no directory;
    it only sets the user's supplementary groups, gid and uid (a plain ``setuid``, after
    which the kernel leaves no capability) and executes the program, in the same process,
    so that exec is checked with the user's rights. Python could switch ids in the child
    itself, but only by ``fork()``-ing the whole gateway (it uses ``vfork`` only when no
    ids change), which blocks the event loop for longer the bigger the gateway grows.
    Without root, the runner can act only as the service's own user and refuses every
    other account.
    """

    def __init__(
        self,
        *,
        path: str = DEFAULT_PATH,
        environment: Mapping[str, str] | None = None,
        containment: Containment | None = None,
    ) -> None:
        self._path = path
        self._extra_environment = dict(environment or {})
        self._given_containment = containment
        self._service_uid = os.geteuid()
        self._switch_user: str | None = None
        if self._service_uid == 0:
            self._switch_user = shutil.which("chroot") or shutil.which("/usr/sbin/chroot")
            if self._switch_user is None:
                raise ConfigError(
                    "chroot was not found on the service's PATH or in /usr/sbin; install "
                    "coreutils (8.23 or newer): the local runner needs it to act as users"
                )

    @classmethod
    def from_config(cls, name: str, machine: MachineConfig, context: BuildContext) -> LocalRunner:
        """A local runner for ``machines.<name>``: its ``path`` and ``environment``."""
        return cls(path=machine.path or DEFAULT_PATH, environment=machine.environment)

    @functools.cached_property
    def _containment(self) -> Containment:
        # Found at the first action, not at start: building a gateway only to check its
        # configuration (or in the parent of --workers) makes no cgroup.
        return self._given_containment or _host_containment()

    def end_actions_of(self, pid: int) -> bool:
        return self._containment.end_actions_of(pid)

    @property
    def single_user(self) -> bool:
        """True when the service is not root and so can act only as itself."""
        return self._service_uid != 0

    def shell_argv(self, account: UnixAccount, command_line: str) -> list[str]:
        return [account.shell, "-c", command_line]

    def _as_user(self, account: UnixAccount, program: str, argv: Sequence[str]) -> list[str]:
        """The argument vector that runs ``program`` (absolute) as ``account``."""
        if account.uid == 0:
            raise Forbidden("actions never run as root")
        if self._switch_user is None:
            if account.uid != self._service_uid:
                raise Forbidden(
                    f"this gateway runs without root as uid {self._service_uid}, "
                    f"so it can act only as that user, not as {account.name}"
                )
            return [program, *argv[1:]]
        return [
            self._switch_user,
            f"--userspec=+{account.uid}:+{account.gid}",  # "+": numbers, no name lookup
            # never empty: chroot would then keep the service's own groups
            "--groups=" + ",".join(f"+{gid}" for gid in account.groups or (account.gid,)),
            "--skip-chdir",
            "/",
            program,
            *argv[1:],
        ]

    def _exec_refused(self, program: str, stderr: bytes) -> str | None:
        """Why ``program`` could not be executed (exit status 126), if chroot says so."""
        refused = re.match(
            rb"\S*chroot: [^\n]*\W" + re.escape(program.encode()) + rb"\W+: ([^\n]+)\n?\Z", stderr
        )
        return refused.group(1).decode(errors="replace") if refused else None

    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        protocol, transport, scope, program = await self._spawn(
            account, argv, limits, stdin=stdin is not None, cwd=cwd
        )

        async def feed() -> None:
            writer = protocol.stdin
            if writer is None:
                return
            try:
                if stdin:
                    writer.write(stdin)
                    await writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the program exited without reading all of it; its status says the rest
            finally:
                writer.close()

        assert protocol.stdout is not None and protocol.stderr is not None
        returncode, stdout, stderr = await pump(
            argv,
            limits,
            stdout=protocol.stdout,
            stderr=protocol.stderr,
            feed=feed,
            exited=protocol.wait_exit,
            kill=scope.kill,
            release=transport.close,
        )
        if returncode == 126 and self._switch_user is not None:
            refused = self._exec_refused(program, stderr)
            if refused == "Resource temporarily unavailable":  # RLIMIT_NPROC, the fallback
                raise BadRequest(
                    f"{account.name} has too many processes on this machine to start "
                    f"{argv[0]} (limits.max_processes)"
                )
            if refused is not None:
                raise Forbidden(f"{account.name} may not run {argv[0]}: {refused}")
        return Completed(
            argv=tuple(argv),
            returncode=returncode,
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
        )

    async def _spawn(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        limits: Limits,
        *,
        stdin: bool,
        cwd: str | None = None,
        read_limit: int = READ_CHUNK,
    ) -> tuple[_ActionProtocol, asyncio.SubprocessTransport, ActionScope, str]:
        """Start ``argv`` as ``account``, contained, with pipes (stdin's only if asked).

        Returns the protocol (streams, exit), the transport, the action's containment and
        the absolute program that was executed.
        """
        environment = account.environment(self._path) | self._extra_environment
        # Found with the user's PATH, as the shell would; argv[0] always comes from the
        # configuration or the account's login shell, never from a request.
        program = shutil.which(argv[0], path=environment["PATH"])
        if program is None:
            raise BadRequest(f"{argv[0]}: command not found on this machine")
        spawn_argv = self._as_user(account, program, argv)
        workdir = cwd or (account.home if os.path.isdir(account.home) else "/")
        scope = self._containment.start(limits.max_processes, limits.max_memory_bytes)
        environment[ACTION_MARKER] = scope.marker
        protocol = _ActionProtocol(asyncio.get_running_loop(), limit=read_limit)
        try:
            transport, _ = await asyncio.get_running_loop().subprocess_exec(
                lambda: protocol,
                *scope.wrap(spawn_argv),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=environment,
                start_new_session=True,  # its own session and group, found again at its end
                close_fds=True,
            )
        except OSError as exc:
            await scope.kill()  # nothing started; this removes the empty cgroups
            if isinstance(exc, FileNotFoundError) and exc.filename == workdir:
                raise BadRequest(f"the directory {workdir} does not exist") from None
            if isinstance(exc, FileNotFoundError):
                raise BadRequest(f"{argv[0]}: command not found on this machine") from None
            if isinstance(exc, PermissionError):
                raise Forbidden(f"{account.name} may not run {argv[0]}: {exc.strerror}") from None
            raise BadRequest(f"cannot start {argv[0]} as {account.name}: {exc.strerror}") from None
        except BaseException:  # stopped while starting: whatever started must not outlive it
            await asyncio.shield(scope.kill())
            raise
        scope.leader = transport.get_pid()
        metrics.PROCESSES_SPAWNED.inc()
        return protocol, transport, scope, program

    # streamed actions: the FILE module's transfers

    async def stream(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: AsyncIterable[bytes] | None = None,
    ) -> AsyncIterator[bytes]:
        """Run ``argv`` as ``account``, yielding its stdout as it comes and feeding it
        ``stdin``, both with back-pressure: the child waits while the consumer does.

        No output cap (memory stays constant: a pipe's worth is buffered), but the whole
        action is bounded by ``limits.timeout``. However it ends (done, failed, timed
        out, or the consumer stopped iterating), everything it started is killed. A
        non-zero exit raises :class:`StreamFailed` with its stderr; an exception raised
        by ``stdin`` is raised again, after the child was killed.
        """
        protocol, transport, scope, _ = await self._spawn(
            account, argv, limits, stdin=stdin is not None, read_limit=_STREAM_CHUNK
        )
        _widen_pipe(transport, 1)
        loop = asyncio.get_running_loop()
        killing: list[asyncio.Task[None]] = []
        expired = False

        def kill_now() -> None:
            if not killing:  # once: the scope's cgroups are removed by the kill
                killing.append(loop.create_task(scope.kill()))

        def expire() -> None:
            nonlocal expired
            expired = True
            kill_now()

        deadline = loop.call_later(limits.timeout, expire)
        stderr = bytearray()

        async def drain_stderr() -> None:
            assert protocol.stderr is not None
            while chunk := await protocol.stderr.read(READ_CHUNK):
                if len(stderr) < _STREAM_STDERR_BYTES:
                    stderr.extend(chunk[: _STREAM_STDERR_BYTES - len(stderr)])

        async def feed() -> None:
            writer = protocol.stdin
            assert writer is not None and stdin is not None
            try:
                async for chunk in stdin:
                    writer.write(chunk)
                    await writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                return  # the child exited early; its status says why
            except BaseException:
                kill_now()  # the input failed: the child must not see a clean end
                raise
            finally:
                # ...and if the kill came before the child joined its cgroup, it must not
                # wait for more input forever: whatever it wrote is discarded by the caller
                writer.close()

        tasks: list[asyncio.Future[None]] = [asyncio.ensure_future(drain_stderr())]
        feeding = asyncio.ensure_future(feed()) if stdin is not None else None
        if feeding is not None:
            tasks.append(feeding)
        try:
            assert protocol.stdout is not None
            while chunk := await protocol.stdout.read(_STREAM_CHUNK):
                yield chunk
            returncode = await protocol.wait_exit()
            if feeding is not None:
                await asyncio.wait([feeding])
                feeding.result()  # an input that failed is the error to report
            await asyncio.wait(tasks, timeout=2.0)
            if expired:
                raise timed_out(argv, limits)
            if returncode != 0:
                reason = stderr.decode("utf-8", errors="replace").strip()
                raise StreamFailed(returncode, reason or f"exit status {returncode}")
        finally:
            deadline.cancel()
            for task in tasks:
                task.cancel()
            kill_now()
            await asyncio.shield(_end_stream(tasks, killing[0], transport))

    def read_bytes(
        self, account: UnixAccount, path: str, *, offset: int, length: int, limits: Limits
    ) -> AsyncIterator[bytes]:
        # dd opens with O_NONBLOCK: a FIFO fails at once instead of waiting for a writer
        argv = [
            "dd",
            f"if={path}",
            "iflag=nonblock,skip_bytes,count_bytes",
            f"skip={offset}",
            f"count={length}",
            "bs=1M",
            "status=none",
        ]
        return _reported(account, f"read {path}", self.stream(account, argv, limits=limits))

    async def write_bytes(
        self,
        account: UnixAccount,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        limits: Limits,
    ) -> int:
        written = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal written
            async for chunk in chunks:
                written += len(chunk)
                yield chunk

        # conv=excl: O_CREAT|O_EXCL, so never an existing file and never through a link
        argv = ["dd", f"of={path}", "conv=excl", "bs=1M", "status=none"]
        output = self.stream(account, argv, limits=limits, stdin=counted())
        async for _ in _reported(account, f"write {path}", output):
            pass
        return written


_STREAM_CHUNK = 1024 * 1024
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ on Linux)


def _widen_pipe(transport: asyncio.SubprocessTransport, fd: int) -> None:
    """Give a transfer's pipe 1 MiB (the default is 64 KiB): fewer wake-ups per byte."""
    pipe = transport.get_pipe_transport(fd)
    handle = pipe.get_extra_info("pipe") if pipe is not None else None
    if handle is not None:
        # past /proc/sys/fs/pipe-max-size, or a pipe already closed by a quick child: as is
        with contextlib.suppress(OSError, ValueError):
            fcntl.fcntl(handle.fileno(), _F_SETPIPE_SZ, _STREAM_CHUNK)


_STREAM_STDERR_BYTES = 64 * 1024


class StreamFailed(GatewayError):
    """A streamed action exited with a non-zero status; the message is its stderr."""

    def __init__(self, returncode: int, reason: str) -> None:
        super().__init__(reason)
        self.returncode = returncode


async def _reported(
    account: UnixAccount, action: str, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """``chunks``, with a failed action reported as the operating system said it."""
    try:
        async for chunk in chunks:
            yield chunk
    except StreamFailed as exc:
        raise os_error(account.name, action, exc.message.splitlines()[-1]) from None
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _end_stream(
    tasks: Sequence[asyncio.Future[None]],
    killing: asyncio.Task[None],
    transport: asyncio.SubprocessTransport,
) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        await killing
    finally:
        transport.close()


class _ActionProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol that also says when the main process has exited.

    ``asyncio.subprocess.Process.wait()`` returns only once the pipes are closed too,
    which a daemonised grandchild can postpone for ever.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, limit: int = READ_CHUNK) -> None:
        super().__init__(limit=limit, loop=loop)
        self._exited: asyncio.Future[int] = loop.create_future()
        self._process: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._process = cast(asyncio.SubprocessTransport, transport)

    def process_exited(self) -> None:
        super().process_exited()
        returncode = self._process.get_returncode() if self._process else None
        if not self._exited.done():
            self._exited.set_result(-1 if returncode is None else returncode)

    async def wait_exit(self) -> int:
        """The main process's exit status (negative: killed by that signal)."""
        return await asyncio.shield(self._exited)


@functools.cache
def _host_containment() -> Containment:
    """What this host allows, discovered once per process (a fact of the host)."""
    return Containment.discover()
