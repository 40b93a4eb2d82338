"""A machine: a runner and a scheduler, and the JOB module's actions on them.

This is where "as the user" and "only your own jobs" are enforced. HTTP routes call these
methods and only translate; the methods call the runner and the scheduler's pure
build/parse methods.
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import TypeVar

from hpcgate.accounts import UnixAccount
from hpcgate.config import Config, MachineConfig
from hpcgate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    TimedOut,
    Unavailable,
)
from hpcgate.jobspec import Submission
from hpcgate.runners.base import Completed, Limits, Runner
from hpcgate.runners.local import DEFAULT_PATH, LocalRunner
from hpcgate.runners.ssh import build_ssh_runner
from hpcgate.schedulers.base import JobRecord, Scheduler
from hpcgate.schedulers.slurm import Slurm
from hpcgate.status.queue_cache import Listing, QueueCache
from hpcgate.status.store import StatusStore

SCRIPT_DIR = "~/newt"
T = TypeVar("T")


@dataclass(frozen=True)
class CommandResult:
    """What a command line printed and how it exited."""

    output: str
    error: str
    retcode: int


class Machine:
    """One cluster as its users see it through the gateway."""

    def __init__(
        self,
        name: str,
        runner: Runner,
        scheduler: Scheduler,
        *,
        command_limits: Limits,
        scheduler_limits: Limits,
        queue_cache: QueueCache | None = None,
        probe_command: list[str] | None = None,
    ) -> None:
        self.name = name
        self.runner = runner
        self.scheduler = scheduler
        self.command_limits = command_limits
        self.scheduler_limits = scheduler_limits
        self.queue_cache = queue_cache
        self.probe_command = probe_command
        self._in_flight: dict[tuple[str, ...], asyncio.Future[Listing]] = {}

    async def _schedule(
        self, account: UnixAccount, argv: list[str], *, cwd: str | None = None
    ) -> Completed:
        try:
            return await self.runner.run(account, argv, limits=self.scheduler_limits, cwd=cwd)
        except TimedOut:
            # A scheduler that does not answer in time is a sick scheduler (503), not a
            # slow user command (504).
            raise Unavailable(
                f"the scheduler of {self.name} did not answer within "
                f"{self.scheduler_limits.timeout:g} s; try again later"
            ) from None

    async def run_command(self, account: UnixAccount, command_line: str) -> CommandResult:
        """Run a command line with the user's shell; a failing command is still a result."""
        done = await self.runner.run_command_line(account, command_line, limits=self.command_limits)
        return CommandResult(output=done.stdout, error=done.stderr, retcode=done.returncode)

    async def submit(self, account: UnixAccount, submission: Submission) -> str:
        """Write the script if one was given, then submit it; returns the job id."""
        options = submission.options
        generated = False
        if submission.jobfile is not None:
            path = account.resolve_path(submission.jobfile)
        else:
            assert submission.script is not None
            if submission.script_path is not None:
                path = account.resolve_path(submission.script_path)
            else:
                path = account.resolve_path(f"{SCRIPT_DIR}/{_script_name()}")
                generated = True
            await self.runner.write_file(
                account, path, submission.script.encode(), limits=self.command_limits
            )
        # The job runs where its script is unless job_wdir says otherwise.
        workdir = options.working_dir or posixpath.dirname(path)
        options = replace(options, working_dir=account.resolve_path(workdir))
        try:
            done = await self._schedule(account, self.scheduler.submit_argv(path, options))
            jobid = self.scheduler.parse_submit(done)
        except BadRequest:
            if generated:  # Slurm refused it: a script nobody asked to keep goes too
                await self.runner.run(account, ["rm", "-f", "--", path], limits=self.command_limits)
            raise
        except GatewayError:
            # No clear answer: the job may exist all the same. Keep its script, and make
            # the user's next listing ask the scheduler.
            await self._note_write(account)
            raise
        await self._note_write(account)
        return jobid

    async def queue(self, account: UnixAccount) -> Listing:
        """The user's jobs that are still in the queue, and when that was read.

        From the monitors' latest snapshot when it is fresh enough and newer than the
        user's last submit or kill here; otherwise from the scheduler, with identical
        concurrent queries answered by one scheduler call.
        """
        if self.queue_cache is not None:
            cached = await self.queue_cache.listing(account.name)
            if cached is not None:
                return cached
        return await self._coalesced(account, self.scheduler.queue_argv(account.name))

    async def _coalesced(self, account: UnixAccount, argv: list[str]) -> Listing:
        key = (account.name, *argv)
        pending = self._in_flight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._live_listing(account, argv))
            self._in_flight[key] = pending
            pending.add_done_callback(lambda done: self._forget(key, done))
        # shield: one caller going away must not cancel the query the others wait for
        return await asyncio.shield(pending)

    async def _live_listing(self, account: UnixAccount, argv: list[str]) -> Listing:
        taken = time.time()
        jobs = self.scheduler.parse_queue(await self._schedule(account, argv))
        return Listing([job for job in jobs if job.user == account.name], taken)

    async def survey(
        self, account: UnixAccount
    ) -> tuple[list[JobRecord], dict[str, dict[str, int]]]:
        """Every user's queued jobs and the node counts, in two scheduler calls."""
        jobs, nodes = await asyncio.gather(
            self._schedule(account, self.scheduler.all_jobs_argv()),
            self._schedule(account, self.scheduler.nodes_argv()),
        )
        return self.scheduler.parse_queue(jobs), self.scheduler.parse_nodes(nodes)

    def _forget(self, key: tuple[str, ...], query: asyncio.Future[Listing]) -> None:
        if self._in_flight.get(key) is query:
            del self._in_flight[key]

    async def _note_write(self, account: UnixAccount) -> None:
        # A listing already under way may have read the queue before this write: later
        # callers must not join it.
        for key in [key for key in self._in_flight if key[0] == account.name]:
            del self._in_flight[key]
        if self.queue_cache is not None:
            await self.queue_cache.note_write(account.name)

    async def _live(self, account: UnixAccount, jobid: str) -> JobRecord | None:
        done = await self._schedule(account, self.scheduler.live_job_argv(jobid))
        return next((job for job in self.scheduler.parse_queue(done) if job.id == jobid), None)

    async def _history(self, account: UnixAccount, jobid: str) -> list[JobRecord]:
        done = await self._schedule(account, self.scheduler.history_argv(jobid))
        return self.scheduler.parse_history(done)

    def _check_owner(self, account: UnixAccount, jobid: str, rows: list[JobRecord]) -> None:
        if not rows:
            raise NotFound(f"there is no job {jobid} on {self.name}")
        owner = rows[0].user
        if owner and owner != account.name:
            raise Forbidden(f"job {jobid} on {self.name} belongs to another user")

    async def job(self, account: UnixAccount, jobid: str) -> list[JobRecord]:
        """One of the user's jobs: its row, then one row per step.

        Accounting has the steps and, once a job has ended, its final record; while the
        job is queued or running the controller is the truth (accounting lags it by
        seconds). A job the latest snapshot shows queued is asked of both at once; any
        other is asked of accounting first, and of the controller only if accounting's
        record is not final, which spares the controller a call for most finished jobs.
        A final record answers even when the controller cannot.
        """
        live: JobRecord | Exception | None
        history: list[JobRecord] | Exception
        if self.queue_cache is None or await self.queue_cache.shows_queued(account.name, jobid):
            live, history = await asyncio.gather(
                _outcome(self._live(account, jobid)), _outcome(self._history(account, jobid))
            )
            final = self._final(jobid, history)
        else:
            history = await _outcome(self._history(account, jobid))
            final = self._final(jobid, history)
            live = None if final else await _outcome(self._live(account, jobid))
        if isinstance(live, Exception):
            if not (final and isinstance(live, GatewayError)):
                raise live
            live = None  # the controller did not answer, but accounting's record is final
        if isinstance(history, Exception):
            if live is None or not isinstance(history, GatewayError):
                raise history  # accounting down and the controller forgot it: no answer
            history = []  # accounting down: the controller's view alone answers
        rows = self.scheduler.merge_job_views(jobid, live, history)
        self._check_owner(account, jobid, rows)
        return rows

    def _final(self, jobid: str, history: list[JobRecord] | Exception) -> bool:
        return not isinstance(history, Exception) and self.scheduler.history_is_final(
            jobid, history
        )

    async def cancel(self, account: UnixAccount, jobid: str) -> None:
        """Kill one of the user's jobs that is still queued or running."""
        live = await self._live(account, jobid)
        if live is None:
            rows = self.scheduler.merge_job_views(jobid, None, await self._history(account, jobid))
            self._check_owner(account, jobid, rows)
            raise Conflict(f"job {jobid} has already finished ({rows[0].status}); nothing to kill")
        self._check_owner(account, jobid, [live])
        if live.finished:
            raise Conflict(f"job {jobid} has already finished ({live.status}); nothing to kill")
        try:
            done = await self._schedule(account, self.scheduler.cancel_argv(jobid))
        finally:  # even a timed-out scancel may have taken effect
            await self._note_write(account)
        self.scheduler.check_cancel(done)


async def _outcome(action: Awaitable[T]) -> T | Exception:
    """What ``action`` returned or raised (cancellation still propagates)."""
    try:
        return await action
    except Exception as exc:
        return exc


def _script_name() -> str:
    return f"newt_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}.sh"


def build_machine(
    name: str, machine: MachineConfig, config: Config, store: StatusStore | None = None
) -> Machine:
    """A Machine from its configuration section; ``store`` enables cached queue views."""
    limits = machine.effective_limits(config.limits)
    runner: Runner
    if machine.ssh is not None and machine.runner == "ssh":
        runner = build_ssh_runner(
            name, machine.ssh, path=machine.path, environment=machine.environment
        )
    else:
        runner = LocalRunner(path=machine.path or DEFAULT_PATH, environment=machine.environment)
    scheduler = Slurm(machine.commands)
    cache = QueueCache(store, name, config.status.queue_max_age) if store is not None else None
    return Machine(
        name,
        runner,
        scheduler,
        command_limits=Limits(limits.timeout, limits.output_bytes),
        scheduler_limits=Limits(limits.scheduler_timeout, limits.scheduler_output_bytes),
        queue_cache=cache,
        probe_command=machine.probe_command,
    )


def build_machines(config: Config, store: StatusStore | None = None) -> dict[str, Machine]:
    return {
        name: build_machine(name, section, config, store)
        for name, section in config.machines.items()
    }
