"""What a machine and the event services need of each other, so neither imports the other.

:class:`~hpcgate.services.machine.Machine` tells a :class:`JobEventSink` about submits and
kills made through it, asks it for ended jobs' kept records, and creates a submit's
one-job webhook through :class:`JobNotifications`; the event service reads a machine's
accounting through :class:`ProbedMachine`. The wiring connects the concrete classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hpcgate.accounts import UnixAccount
from hpcgate.process import Limits
from hpcgate.runners.base import Runner
from hpcgate.schedulers.base import JobRecord, Scheduler

SubmitListener = Callable[[UnixAccount, str], None]
"""Told of every job submitted through a machine (the account, the job id); it must not
block the submit's answer (start background work and return)."""


class JobEventSink(Protocol):
    """What a machine tells the event service."""

    async def submitted(self, machine: str, account: UnixAccount, jobid: str, name: str) -> None:
        """A job was submitted through the gateway."""

    async def cancelled(
        self, machine: str, account: UnixAccount, jobid: str, live: JobRecord
    ) -> None:
        """A job was killed through the gateway."""

    async def finished(self, machine: str, jobid: str) -> list[JobRecord] | None:
        """An ended job's kept final record (job, then steps), or None."""


class JobNotifications(Protocol):
    """Webhooks, as a submit with ``notify_url`` uses them."""

    async def check_destination(self, url: str) -> str:
        """``url`` if events may be POSTed there; BadRequest saying why not."""

    async def create(
        self,
        account: UnixAccount,
        url: Any,
        *,
        machine: Any = None,
        jobid: Any = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """A new subscription (replacing the one made with the same ``key``)."""


class ProbedMachine(Protocol):
    """What the event service needs of a machine to read its accounting."""

    @property
    def name(self) -> str: ...

    @property
    def runner(self) -> Runner: ...

    @property
    def scheduler(self) -> Scheduler: ...

    @property
    def scheduler_limits(self) -> Limits: ...
