"""The local transport: actions run on this host, as the user, via setuid children."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from hpcgate.accounts import UnixAccount
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

    As root, every child switches to the user's uid, gid and supplementary groups before
    it executes anything. Without root, the runner can act only as the service's own user
    and refuses every other account.
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

    @property
    def single_user(self) -> bool:
        """True when the service is not root and so can act only as itself."""
        return self._service_uid != 0

    def shell_argv(self, account: UnixAccount, command_line: str) -> list[str]:
        return [account.shell, "-c", command_line]

    def _identity(self, account: UnixAccount) -> dict[str, Any]:
        if account.uid == 0:
            raise Forbidden("actions never run as root")
        if not self.single_user:
            return {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
        if account.uid != self._service_uid:
            raise Forbidden(
                f"this gateway runs without root as uid {self._service_uid}, "
                f"so it can act only as that user, not as {account.name}"
            )
        return {}

    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        identity = self._identity(account)
        environment = account.environment(self._path) | self._extra_environment
        workdir = cwd or (account.home if os.path.isdir(account.home) else "/")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=environment,
                start_new_session=True,  # its own process group, so a kill takes everything
                close_fds=True,
                **identity,
            )
        except FileNotFoundError as exc:
            if exc.filename == workdir:
                raise BadRequest(f"the directory {workdir} does not exist") from None
            raise BadRequest(f"{argv[0]}: command not found on this machine") from None
        except PermissionError as exc:
            raise Forbidden(f"{account.name} may not run {argv[0]}: {exc.strerror}") from None
        except OSError as exc:
            # e.g. cwd missing; the child never started, so nothing is left behind
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
        return Completed(
            argv=tuple(argv),
            returncode=process.returncode if process.returncode is not None else -1,
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
