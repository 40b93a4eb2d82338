"""What every process an action starts is held to, and what it leaves behind.

Neutral types shared by the transports (``hpcgate.runners``), the schedulers and the
services: the limits an action runs under, a finished process, and the errors for an
action killed at a limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcgate.errors import BadRequest, TimedOut


@dataclass(frozen=True)
class Limits:
    """How long an action may run, how much it may print (stdout + stderr together), how
    many processes it may have at once and how much memory each may map."""

    timeout: float
    output_bytes: int
    max_processes: int = 256
    max_memory_bytes: int | None = None
    """The address space of each of the action's processes (RLIMIT_AS); None: unbounded."""


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
