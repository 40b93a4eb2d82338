"""A machine: a runner and a scheduler, and the JOB module's actions on them.

This is where "as the user" and "only your own jobs" are enforced. HTTP routes call these
methods and only translate; the methods call the runner and the scheduler's pure
build/parse methods.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hpcgate import metrics
from hpcgate.accounts import UnixAccount
from hpcgate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    NotWritten,
    TimedOut,
    Unavailable,
)
from hpcgate.jobspec import Submission
from hpcgate.process import Completed, Limits
from hpcgate.runners.base import Runner
from hpcgate.schedulers.base import JobRecord, Phase, Scheduler
from hpcgate.services.hooks import JobEventSink, JobNotifications, SubmitListener
from hpcgate.services.queue_cache import Listing, QueueCache
from hpcgate.services.submits import (
    IdempotentSubmits,
    NothingSubmitted,
    fingerprint,
    tag_finder,
    tagged,
)

SCRIPT_DIR = "~/newt"
LAG_RECHECK_SECONDS = 0.5
"""How long records for accounting may wait before it counts as lagging."""
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    """What a command line printed and how it exited."""

    output: str
    error: str
    retcode: int


@dataclass(frozen=True)
class Submitted:
    """A job submitted through the gateway, and its one-job webhook when one was asked."""

    jobid: str
    notify: dict[str, Any] | None = None
    """The subscription made for ``notify_url`` (with its secret), if any."""

    def public(self) -> dict[str, Any]:
        """The submit's answer: the job id, and ``notify`` when there is one."""
        if self.notify is None:
            return {"jobid": self.jobid}
        return {"jobid": self.jobid, "notify": self.notify}


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
        submits: IdempotentSubmits | None = None,
        probe_command: list[str] | None = None,
        events: JobEventSink | None = None,
        notifications: JobNotifications | None = None,
    ) -> None:
        self.name = name
        self.events = events
        self.notifications = notifications
        self.submit_listeners: list[SubmitListener] = []
        """Told of every job submitted through :meth:`submit_job` (e.g. to record where
        its output goes)."""
        self.runner = runner
        self.scheduler = scheduler
        self.command_limits = command_limits
        self.scheduler_limits = scheduler_limits
        self.queue_cache = queue_cache
        self.submits = submits
        self.probe_command = probe_command
        self._in_flight: dict[tuple[str, ...], asyncio.Future[Listing]] = {}

    async def _schedule(
        self,
        account: UnixAccount,
        argv: list[str],
        *,
        cwd: str | None = None,
        after_writing: tuple[str, bytes] | None = None,
    ) -> Completed:
        """Run a scheduler command as the user; ``after_writing`` (a path and its bytes)
        is written first, under the command limits, in the same exchange (a job script
        and its submit: see :meth:`Runner.joins_write_and_run`; NotWritten if it fails)."""
        if after_writing is None:
            call = self.runner.run(account, argv, limits=self.scheduler_limits, cwd=cwd)
        else:
            path, data = after_writing
            call = self.runner.write_then_run(
                account,
                path,
                data,
                argv,
                write_limits=self.command_limits,
                limits=self.scheduler_limits,
                cwd=cwd,
            )
        try:
            return await metrics.scheduler_call(self.name, argv[0], call)
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

    async def submit_job(
        self, account: UnixAccount, submission: Submission, *, idempotency_key: str | None = None
    ) -> Submitted:
        """Everything ``POST /api/job`` does: check ``notify_url`` before anything is
        submitted, submit (once per ``idempotency_key``), tell the submit listeners, and
        make the job's one-job webhook (one per job and URL, however often retried)."""
        url = submission.notify_url
        if url is not None:
            if self.notifications is None:
                raise BadRequest("notify_url: webhooks are not enabled on this gateway")
            await self.notifications.check_destination(url)
        jobid = await self.submit(account, submission, idempotency_key=idempotency_key)
        for listener in self.submit_listeners:
            try:
                listener(account, jobid)
            except Exception:  # the job is submitted: never fail its answer for this
                log.exception("a submit listener of %s failed on job %s", self.name, jobid)
        if url is None or self.notifications is None:
            return Submitted(jobid)
        notify = await self.notifications.create(
            account, url, machine=self.name, jobid=jobid, key=f"notify|{self.name}|{jobid}|{url}"
        )
        return Submitted(jobid, notify)

    async def submit(
        self, account: UnixAccount, submission: Submission, *, idempotency_key: str | None = None
    ) -> str:
        """Submit a job; returns its id. With ``idempotency_key``, a retry of the same
        submission returns the first one's job id and submits nothing."""
        if idempotency_key is None:
            return await self._submit(account, submission)
        if self.submits is None:
            raise Unavailable(f"{self.name} does not keep Idempotency-Key records")
        return await self.submits.submit(
            account.name,
            self.name,
            idempotency_key,
            fingerprint(self.name, submission),
            lambda tag: self._submit(account, tagged(submission, tag)),
            tag_finder(self.scheduler, lambda argv: self._schedule(account, argv), account.name),
            self.runner.end_actions_of,
        )

    async def _submit(self, account: UnixAccount, submission: Submission) -> str:
        """Write the script if one was given, then submit it; returns the job id."""
        options = submission.options
        generated = False
        script: tuple[str, bytes] | None = None  # to write first
        if submission.jobfile is not None:
            path = account.resolve_path(submission.jobfile)
            await self._check_regular_file(account, path)
        else:
            assert submission.script is not None
            if submission.script_path is not None:
                path = account.resolve_path(submission.script_path)
            else:
                path = account.resolve_path(f"{SCRIPT_DIR}/{_script_name()}")
                generated = True
            script = (path, submission.script.encode())
        # The job runs where its script is unless job_wdir says otherwise.
        workdir = options.working_dir or posixpath.dirname(path)
        options = replace(options, working_dir=account.resolve_path(workdir))
        argv = self.scheduler.submit_argv(path, options)
        joined = script is not None and self.runner.joins_write_and_run(
            argv[0], self.command_limits, self.scheduler_limits
        )
        if script is not None and not joined:
            await self.runner.write_file(account, *script, limits=self.command_limits)
            script = None  # written: the submit alone is left
        done: Completed | None = None
        try:
            done = await self._schedule(account, argv, after_writing=script)
            jobid = self.scheduler.parse_submit(done)
        except NotWritten as failed:  # as when the script is written alone: nothing ran
            raise failed.error from None
        except BadRequest:
            if generated:  # Slurm refused it: a script nobody asked to keep goes too
                await self.runner.run(account, ["rm", "-f", "--", path], limits=self.command_limits)
            raise
        except GatewayError as exc:
            if done is not None and self.scheduler.submitted_nothing(done):
                raise NothingSubmitted(str(exc)) from exc
            # No clear answer: the job may exist all the same. Keep its script, and make
            # the user's next listing ask the scheduler.
            await self._note_write(account)
            raise
        await self._note_write(account)
        if self.events is not None:
            await self.events.submitted(
                self.name, account, jobid, options.name or posixpath.basename(path)
            )
        return jobid

    async def _check_regular_file(self, account: UnixAccount, path: str) -> None:
        """Refuse a job file that is not a regular file (a FIFO or a device would hang or
        flood sbatch), checked as the user: the service never looks at a user's path."""
        checked = await self.runner.run(account, ["test", "-f", path], limits=self.command_limits)
        if not checked.ok:
            raise BadRequest(
                f"the job file {path} does not exist, cannot be reached by {account.name}, "
                "or is not a regular file"
            )

    async def queue(self, account: UnixAccount) -> Listing:
        """The user's jobs that are still in the queue, and when that was read.

        From the monitors' latest snapshot when it is fresh enough and newer than the
        user's last submit or kill here; otherwise from the scheduler, with identical
        concurrent queries answered by one scheduler call.
        """
        if self.queue_cache is not None:
            cached = await self.queue_cache.listing(account)
            if cached is not None:
                return cached
        return await self._coalesced(account, self.scheduler.queue_argv(account.name))

    async def _coalesced(self, account: UnixAccount, argv: list[str]) -> Listing:
        # Keyed on who asks, not on the argv: a scheduler may make every argv unique
        # (Slurm's per-call delimiter), and identical listings must still share a call.
        key = (account.name, "queue")
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
        return Listing([job for job in jobs if job.uid == account.uid], taken)

    async def survey(
        self, account: UnixAccount
    ) -> tuple[list[JobRecord], dict[str, dict[str, int]]]:
        """Every user's queued jobs and the node counts, in two scheduler calls."""
        jobs, nodes = await asyncio.gather(
            self._schedule(account, self.scheduler.all_jobs_argv()),
            self._schedule(account, self.scheduler.nodes_argv()),
        )
        # Parsing a whole cluster's queue takes ~20 ms per 1,000 jobs here: in a thread, the
        # event loop serving requests waits at most a GIL switch interval at a time.
        return await asyncio.to_thread(self._parse_survey, jobs, nodes)

    def _parse_survey(
        self, jobs: Completed, nodes: Completed
    ) -> tuple[list[JobRecord], dict[str, dict[str, int]]]:
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
        return self.scheduler.find_job(jobid, self.scheduler.parse_queue(done))

    async def _history(self, account: UnixAccount, jobid: str) -> list[JobRecord]:
        done = await self._schedule(account, self.scheduler.history_argv(jobid))
        return self.scheduler.parse_history(done)

    def _check_owner(self, account: UnixAccount, jobid: str, rows: list[JobRecord]) -> None:
        if not rows:
            raise NotFound(f"there is no job {jobid} on {self.name}")
        # Decided on the uid the scheduler recorded: a name, a user may write.
        if rows[0].uid != account.uid:
            raise Forbidden(f"job {jobid} on {self.name} belongs to another user")

    async def kept_job(self, account: UnixAccount, jobid: str) -> list[JobRecord] | None:
        """The user's ended job as the monitors kept its final record (no scheduler
        call), or None when none is kept. Another user's is Forbidden."""
        if self.events is None:
            return None
        kept = await self.events.finished(self.name, jobid)
        if not kept:
            return None
        self._check_owner(account, jobid, kept)
        return kept

    async def job(self, account: UnixAccount, jobid: str) -> list[JobRecord]:
        """One of the user's jobs: its row, then one row per step.

        Accounting has the steps and, once a job has ended, its final record; while the
        job is queued or running the controller is the truth (accounting lags it by
        seconds). A job the latest snapshot shows waiting to start is asked of the
        controller alone while it still waits (it has no steps yet); one the snapshot
        shows otherwise queued is asked of both at once; any other is asked of accounting
        first, and of the controller only if accounting's record is not final, which
        spares the controller a call for most finished jobs. A final record answers even
        when the controller cannot.
        """
        kept = await self.kept_job(account, jobid)
        if kept is not None:
            return kept
        live: JobRecord | GatewayError | None
        history: list[JobRecord] | GatewayError
        listed, seen = (
            (True, None)
            if self.queue_cache is None
            else await self.queue_cache.hint(account, jobid)
        )
        if seen is not None and seen.phase is Phase.QUEUED:
            # Waiting to start, as of the snapshot: if the controller says it still is,
            # it has no steps and accounting has nothing final, so the controller alone
            # answers (accounting costs ~90 ms a call here; bench/README.md).
            live = await _outcome(self._live(account, jobid))
            if isinstance(live, JobRecord) and live.phase is Phase.QUEUED:
                rows = self.scheduler.job_view(jobid, live, [])
                self._check_owner(account, jobid, rows)
                return rows
            history = await _outcome(self._history(account, jobid))  # it started since
        elif listed:
            live, history = await asyncio.gather(
                _outcome(self._live(account, jobid)), _outcome(self._history(account, jobid))
            )
        else:
            history = await _outcome(self._history(account, jobid))
            live = (
                None if self._final(jobid, history) else await _outcome(self._live(account, jobid))
            )
        rows = self.scheduler.job_view(jobid, live, history) or await self._unknown_job(
            account, jobid
        )
        self._check_owner(account, jobid, rows)
        return rows

    async def _unknown_job(self, account: UnixAccount, jobid: str) -> list[JobRecord]:
        """A job neither the controller nor accounting knew: 503 while accounting may
        still be catching up (after a slurmdbd outage), since a possibly wrong "no job"
        must never be given; else accounting is read once more, and 404 only if that
        read, made after the check, does not know it either (the records may have landed
        between the first read and the check). A scheduler that cannot tell whether its
        accounting lags answers 404 at once."""
        argv = self.scheduler.accounting_lag_argv()
        if argv is None:
            raise NotFound(f"there is no job {jobid} on {self.name}")
        if await self._lagging(account, argv):
            raise Unavailable(
                f"accounting is catching up with the controller of {self.name}; "
                "try again in a moment"
            )
        rows = self.scheduler.merge_job_views(jobid, None, await self._history(account, jobid))
        if not rows:
            raise NotFound(f"there is no job {jobid} on {self.name}")
        return rows

    async def _lagging(self, account: UnixAccount, argv: list[str]) -> bool:
        # A healthy accounting daemon takes each record within milliseconds, so records
        # still waiting a moment later mean it is away or catching up.
        for attempt in range(2):
            if not self.scheduler.parse_accounting_lag(await self._schedule(account, argv)):
                return False
            if attempt == 0:
                await asyncio.sleep(LAG_RECHECK_SECONDS)
        return True

    def _final(self, jobid: str, history: list[JobRecord] | GatewayError) -> bool:
        return not isinstance(history, GatewayError) and self.scheduler.history_is_final(
            jobid, history
        )

    async def cancel(self, account: UnixAccount, jobid: str) -> None:
        """Kill one of the user's jobs that is still queued or running."""
        live = await self._live(account, jobid)
        if live is None:
            rows = self.scheduler.merge_job_views(
                jobid, None, await self._history(account, jobid)
            ) or await self._unknown_job(account, jobid)
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
        if self.events is not None:
            await self.events.cancelled(self.name, account, jobid, live)


async def _outcome(action: Awaitable[T]) -> T | GatewayError:
    """What ``action`` returned, or the GatewayError it raised (anything else propagates)."""
    try:
        return await action
    except GatewayError as exc:
        return exc


def _script_name() -> str:
    return f"newt_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}.sh"
