"""A runner that runs nothing: it answers from recorded results (as httpx's MockTransport).

For tests of everything above the transport — the services, the API, a scheduler
plug-in — without root, a cluster or an SSH server::

    runner = ReplayRunner()
    runner.on("squeue", load_recording("squeue-alice.json"))
    runner.on("sacct", Unavailable("slurmdbd is down"))          # a sick scheduler
    runner.on(["scancel", "--", "42"], ok(), gate=released)      # held until released
    ... exercise the code ...
    assert runner.programs() == ["sacct", "squeue"]

Each call is matched against the rules, newest first, so a test may override the
defaults a fixture set. A call no rule matches fails the test with
:class:`UnexpectedCall` (never a GatewayError, which the code under test might handle).
"""

from __future__ import annotations

import asyncio
import json
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcgate.accounts import UnixAccount
from hpcgate.process import Completed, Limits, output_too_large, timed_out
from hpcgate.runners.base import Runner


@dataclass(frozen=True)
class Call:
    """One program a replay runner was asked to run."""

    account: UnixAccount
    argv: tuple[str, ...]
    limits: Limits
    stdin: bytes | None = None
    cwd: str | None = None

    @property
    def program(self) -> str:
        """The program's base name: ``squeue`` for ``/usr/bin/squeue``."""
        return posixpath.basename(self.argv[0]) if self.argv else ""


Answer = Completed | BaseException | Callable[[Call], Completed]
"""What a rule answers: a result, an error to raise, or a function of the call."""
Matcher = str | Sequence[str] | Callable[[tuple[str, ...]], bool]
"""A program name (or path), an exact argument vector, or a predicate on the argv."""


class UnexpectedCall(AssertionError):
    """A call that no rule of the replay runner matches."""


def ok(stdout: str = "", stderr: str = "") -> Completed:
    """A result that exited 0 (its argv is filled in with the call's)."""
    return Completed((), 0, stdout, stderr)


def failed(stderr: str, returncode: int = 1, stdout: str = "") -> Completed:
    """A result that exited with ``returncode`` after printing ``stderr``."""
    return Completed((), returncode, stdout, stderr)


def load_recording(path: str | Path) -> Completed:
    """A result saved by :func:`save_recording`."""
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return Completed(tuple(data["argv"]), data["returncode"], data["stdout"], data["stderr"])


def save_recording(path: str | Path, result: Completed) -> None:
    """Save ``result`` (argv, exit status, output) as JSON for :func:`load_recording`."""
    data = {
        "argv": list(result.argv),
        "returncode": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
    }
    Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


@dataclass
class Rule:
    """One recorded answer and the calls it is for."""

    match: Matcher
    answer: Answer
    when: Callable[[tuple[str, ...]], bool] | None = None
    delay: float = 0.0
    gate: asyncio.Event | None = None
    times: int | None = None
    """How many calls it answers; None: every one."""
    used: int = field(default=0, init=False)

    def matches(self, argv: tuple[str, ...]) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.when is not None and not self.when(argv):
            return False
        if isinstance(self.match, str):
            return bool(argv) and self.match in (argv[0], posixpath.basename(argv[0]))
        if callable(self.match):
            return self.match(argv)
        return argv == tuple(self.match)


class ReplayRunner(Runner):
    """Answers ``run()`` from a table of recorded results and records every call.

    Limits hold as for a real transport: an answer held past ``limits.timeout`` (by
    ``delay`` or an unreleased ``gate``) raises TimedOut, and one that prints more than
    ``limits.output_bytes`` raises BadRequest.
    """

    def __init__(self, *rules: Rule) -> None:
        self.rules: list[Rule] = list(rules)
        self.calls: list[Call] = []

    def on(
        self,
        match: Matcher,
        answer: Answer | str,
        *,
        when: Callable[[tuple[str, ...]], bool] | None = None,
        delay: float = 0.0,
        gate: asyncio.Event | None = None,
        times: int | None = None,
    ) -> Rule:
        """Answer calls that ``match`` (and ``when``, if given) with ``answer``.

        A string answer is the stdout of a successful run. ``delay`` seconds pass, and
        ``gate`` must be set, before the answer is given. Newer rules win.
        """
        if isinstance(answer, str):
            answer = ok(answer)
        rule = Rule(match, answer, when=when, delay=delay, gate=gate, times=times)
        self.rules.append(rule)
        return rule

    def shell_argv(self, account: UnixAccount, command_line: str) -> list[str]:
        return [account.shell, "-c", command_line]

    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        call = Call(account, tuple(argv), limits, stdin, cwd)
        self.calls.append(call)
        rule = next((rule for rule in reversed(self.rules) if rule.matches(call.argv)), None)
        if rule is None:
            raise UnexpectedCall(f"no recorded answer for {list(call.argv)}")
        rule.used += 1
        try:
            return await asyncio.wait_for(self._answer(rule, call), limits.timeout)
        except TimeoutError:
            raise timed_out(call.argv, limits) from None

    async def _answer(self, rule: Rule, call: Call) -> Completed:
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.gate is not None:
            await rule.gate.wait()
        answer = rule.answer
        if isinstance(answer, BaseException):
            raise answer
        result = answer if isinstance(answer, Completed) else answer(call)
        result = replace(result, argv=call.argv)
        if len(result.stdout.encode()) + len(result.stderr.encode()) > call.limits.output_bytes:
            raise output_too_large(call.argv, call.limits)
        return result

    # what happened

    def calls_to(self, program: str) -> list[Call]:
        """The calls of ``program`` (a base name), in order."""
        return [call for call in self.calls if call.program == program]

    def programs(self) -> list[str]:
        """The base names of the programs called, in order."""
        return [call.program for call in self.calls]
