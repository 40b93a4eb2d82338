"""How actions run on a machine: the interface every transport implements.

A runner runs a program *as a given Unix account*, never as the service, within a time
limit and an output cap. Transports (local, SSH, ...) each implement this class in a
module of their own; nothing else in hpcgate knows how a process is started.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from hpcgate.accounts import UnixAccount
from hpcgate.errors import BadRequest, Forbidden, TimedOut


@dataclass(frozen=True)
class Limits:
    """How long an action may run and how much it may print (stdout + stderr)."""

    timeout: float
    output_bytes: int


@dataclass(frozen=True)
class Completed:
    """A finished process: its exit status and what it printed."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class OutputTooLarge(Exception):
    """An action printed more than its cap (raised while draining its output)."""


class OutputBudget:
    """What an action may still print, stdout and stderr together."""

    def __init__(self, cap: int) -> None:
        self.left = cap

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise OutputTooLarge


def timed_out(argv: Sequence[str], limits: Limits) -> TimedOut:
    """The error for an action killed at its time limit (every transport says the same)."""
    return TimedOut(f"{argv[0]} did not finish within {limits.timeout:g} s and was killed")


def output_too_large(argv: Sequence[str], limits: Limits) -> BadRequest:
    """The error for an action killed at its output cap."""
    return BadRequest(
        f"{argv[0]} printed more than {limits.output_bytes} bytes and was killed; "
        "redirect large output to a file"
    )


class Runner(ABC):
    """Runs programs on one machine as a user."""

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
