"""How actions run on a machine: the interface every transport implements.

A runner runs a program *as a given Unix account*, never as the service, within a time
limit and an output cap. Transports (local, SSH, ...) each implement this class in a
module of their own; nothing else in hpcgate knows how a process is started.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence

from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError, MachineConfig
from hpcgate.errors import BadRequest, Forbidden, GatewayError, NotWritten, Unavailable
from hpcgate.plugins import BuildContext
from hpcgate.process import Completed, Limits


class Runner(ABC):
    """Runs programs on one machine as a user.

    Registered under the ``hpcgate.runners`` entry-point group (see :mod:`hpcgate.plugins`)
    and named by ``machines.NAME.runner``.
    """

    @classmethod
    def from_config(cls, name: str, machine: MachineConfig, context: BuildContext) -> Runner:
        """The runner of machine ``name``; raises ConfigError for a wrong setting."""
        raise ConfigError(f"machines.{name}.runner: {cls.__name__} cannot be configured")

    async def close(self) -> None:  # noqa: B027 - optional: only runners holding connections
        """Release connections and processes (at shutdown); safe to call twice."""

    def end_actions_of(self, pid: int) -> bool:
        """End whatever a gone gateway process ``pid`` of this host left running through
        this runner; True only when none of its actions can still run. The default,
        False, is right wherever actions may outlive the gateway (e.g. over SSH, on
        another host): a keyed submit it left then waits out its attempt limit."""
        return False

    def take_stand_ins(self, stand_ins: Mapping[str, str]) -> bool:
        """Answer these programs in a long-lived process of the user's where the stand-in
        can (:meth:`hpcgate.schedulers.base.Scheduler.stand_ins`); False, the default,
        when this transport cannot (the programs then always run)."""
        return not stand_ins

    @abstractmethod
    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        """Run ``argv`` (no shell) as ``account``; cwd defaults to the account's home.

        Raises TimedOut past ``limits.timeout`` and BadRequest past ``limits.output_bytes``,
        after killing everything the action started.
        """

    @abstractmethod
    def shell_argv(self, account: UnixAccount, command_line: str) -> list[str]:
        """The argument vector that runs ``command_line`` with the account's own shell."""

    async def run_command_line(
        self, account: UnixAccount, command_line: str, *, limits: Limits
    ) -> Completed:
        """Run a whole command line through the account's shell (the command endpoint)."""
        return await self.run(account, self.shell_argv(account, command_line), limits=limits)

    async def write_file(
        self, account: UnixAccount, path: str, data: bytes, *, limits: Limits
    ) -> None:
        """Create or replace the file at absolute ``path`` as ``account``, making parents.

        The machine's own permissions decide: a path the user may not write is Forbidden,
        with the operating system's reason.
        """
        # dd reads the inherited pipe on fd 0 (a setuid child may not reopen it as
        # /dev/stdin) and takes the path inside its one argument, so it cannot be an
        # option; it truncates an existing file and refuses a directory.
        write = ["dd", f"of={path}", "bs=65536", "status=none"]
        made = await self.run(account, write, limits=limits, stdin=data)
        if not made.ok:
            # Most often the parents are missing: make them, as the user, and write again
            # (any other failure repeats and is reported). The service, as root, never
            # checks a path itself: its answer would reveal which hidden paths exist.
            made = await self.run(
                account, ["mkdir", "-p", "--", posixpath.dirname(path)], limits=limits
            )
            if made.ok:
                made = await self.run(account, write, limits=limits, stdin=data)
        if not made.ok:
            reason = made.stderr.strip() or f"exit status {made.returncode}"
            if "Permission denied" in reason or "Read-only file system" in reason:
                raise Forbidden(f"{account.name} may not write {path}: {reason}")
            raise BadRequest(f"cannot write {path}: {reason}")

    def joins_write_and_run(self, program: str, write_limits: Limits, limits: Limits) -> bool:
        """Whether :meth:`write_then_run` writes a file and runs ``program`` in one exchange
        (a job script and its submit); False, the default: the caller writes, then runs."""
        return False

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
        """:meth:`write_file` under ``write_limits``, then :meth:`run` of ``argv`` (a program
        that reads the file) under ``limits``. A write that fails raises NotWritten, with
        the error ``write_file`` raises, and nothing runs."""
        try:
            await self.write_file(account, path, data, limits=write_limits)
        except GatewayError as exc:
            raise NotWritten(exc) from exc
        return await self.run(account, argv, limits=limits, cwd=cwd)

    # File access (the FILE module). Metadata operations run as programs through
    # ``run`` (the same on every transport; see hpcgate.services.files); these two move
    # the bytes, streamed both ways with back-pressure, as the user. A transport without
    # them still runs commands and jobs; its file transfers answer 503.

    def read_bytes(
        self, account: UnixAccount, path: str, *, offset: int, length: int, limits: Limits
    ) -> AsyncIterator[bytes]:
        """The bytes ``[offset, offset + length)`` of the file at ``path``, read as
        ``account`` and yielded as they arrive, never all held at once.

        The caller has checked, as the user, that ``path`` is a regular file; the
        transport opens it without blocking (a FIFO swapped in meanwhile fails, it never
        hangs). Closing the iterator early (the client went away) ends whatever serves
        it. The whole transfer is bounded by ``limits.timeout``.
        """
        raise Unavailable(f"the {type(self).__name__} transport has no file access")

    async def write_bytes(
        self,
        account: UnixAccount,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        limits: Limits,
    ) -> int:
        """Create the new file ``path`` as ``account`` (exclusively: never an existing
        file, never through a link) and write ``chunks`` into it; returns the bytes
        written. On any failure, cancellation included, whatever was written stays for
        the caller to remove; errors carry the operating system's reason.
        """
        raise Unavailable(f"the {type(self).__name__} transport has no file access")
