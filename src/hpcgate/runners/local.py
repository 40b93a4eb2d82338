"""The local transport: actions run on this host, as the user, via setuid children."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence

from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError
from hpcgate.errors import BadRequest, Forbidden
from hpcgate.runners.base import (
    Completed,
    Limits,
    OutputBudget,
    OutputTooLarge,
    Runner,
    output_too_large,
    timed_out,
)

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
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
    ) -> None:
        self._path = path
        self._extra_environment = dict(environment or {})
        self._service_uid = os.geteuid()
        self._switch_user: str | None = None
        if self._service_uid == 0:
            self._switch_user = shutil.which("chroot") or shutil.which("/usr/sbin/chroot")
            if self._switch_user is None:
                raise ConfigError(
                    "chroot was not found on the service's PATH or in /usr/sbin; install "
                    "coreutils (8.23 or newer): the local runner needs it to act as users"
                )

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
        environment = account.environment(self._path) | self._extra_environment
        # Found with the user's PATH, as the shell would; argv[0] always comes from the
        # configuration or the account's login shell, never from a request.
        program = shutil.which(argv[0], path=environment["PATH"])
        if program is None:
            raise BadRequest(f"{argv[0]}: command not found on this machine")
        spawn_argv = self._as_user(account, program, argv)
        workdir = cwd or (account.home if os.path.isdir(account.home) else "/")
        try:
            process = await asyncio.create_subprocess_exec(
                *spawn_argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=environment,
                start_new_session=True,  # its own process group, so a kill takes everything
                close_fds=True,
            )
        except FileNotFoundError as exc:
            if exc.filename == workdir:
                raise BadRequest(f"the directory {workdir} does not exist") from None
            raise BadRequest(f"{argv[0]}: command not found on this machine") from None
        except PermissionError as exc:
            raise Forbidden(f"{account.name} may not run {argv[0]}: {exc.strerror}") from None
        except OSError as exc:
            # the child never started, so nothing is left behind
            raise BadRequest(f"cannot start {argv[0]} as {account.name}: {exc.strerror}") from None

        try:
            stdout, stderr = await asyncio.wait_for(
                _communicate(process, stdin, limits.output_bytes), timeout=limits.timeout
            )
        except TimeoutError:
            await _kill_group(process)
            raise timed_out(argv, limits) from None
        except OutputTooLarge:
            await _kill_group(process)
            raise output_too_large(argv, limits) from None
        except BaseException:  # cancelled (client gone) or anything else: leave no orphans
            await _kill_group(process)
            raise
        returncode = process.returncode if process.returncode is not None else -1
        if returncode == 126 and self._switch_user is not None:
            refused = self._exec_refused(program, stderr)
            if refused is not None:
                raise Forbidden(f"{account.name} may not run {argv[0]}: {refused}")
        return Completed(
            argv=tuple(argv),
            returncode=returncode,
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
        )


async def _communicate(
    process: asyncio.subprocess.Process, stdin: bytes | None, cap: int
) -> tuple[bytes, bytes]:
    budget = OutputBudget(cap)

    async def drain(stream: asyncio.StreamReader | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := await stream.read(_READ_CHUNK):
            budget.spend(len(chunk))
            into += chunk

    async def feed() -> None:
        if process.stdin is None:
            return
        try:
            if stdin:
                process.stdin.write(stdin)
                await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the program exited without reading all of it; its status says the rest
        finally:
            process.stdin.close()

    out, err = bytearray(), bytearray()
    tasks = [
        asyncio.ensure_future(feed()),
        asyncio.ensure_future(drain(process.stdout, out)),
        asyncio.ensure_future(drain(process.stderr, err)),
    ]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # gather leaves the siblings of a failed task running: stop them before the
        # caller kills the process and reads its pipes to the end.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    await process.wait()
    return bytes(out), bytes(err)


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - only if the child changed its group
        process.kill()
    try:
        # Reading to EOF also closes the pipes' transport, which would otherwise leak
        # its file descriptors for the life of the server.
        await asyncio.wait_for(process.communicate(), timeout=5)
    except TimeoutError:  # pragma: no cover - a child that left the group keeps a pipe open
        log.error("process %d: pipes still open 5 s after SIGKILL", process.pid)
