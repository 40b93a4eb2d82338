"""What hpcgate needs from a batch scheduler: pure argument builders and output parsers.

A scheduler module never runs anything. It builds argument vectors and parses what they
print; the machine layer runs them as the user through a runner. Adding a scheduler means
adding one module that implements :class:`Scheduler`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from hpcgate.config import MachineConfig
from hpcgate.errors import GatewayError
from hpcgate.jobspec import JobOptions
from hpcgate.process import Completed


class Phase(StrEnum):
    """Where a job is in its life, whatever the scheduler calls it (psij's ``JobState``)."""

    QUEUED = "queued"
    """Waiting to start: pending, held, configuring, requeued."""
    RUNNING = "running"
    """Started and not yet ended: running, suspended, completing."""
    FINISHED = "finished"
    """Ended, for good: completed, failed, cancelled, timed out..."""


@dataclass(frozen=True)
class JobRecord:
    """One row about a job, or about one of its steps, as the scheduler reports it.

    The scheduler's parser fills every field; ``phase`` and ``code`` are its reading of
    its own ``state`` word, so nothing above the scheduler module interprets that word.
    """

    id: str
    name: str
    user: str
    state: str
    """The scheduler's state word as printed, e.g. ``PENDING`` or ``CANCELLED by 1001``."""
    partition: str
    elapsed: str
    nodes: int
    tasks: int | None
    nodelist: str
    """The nodes, or while pending the reason in parentheses, e.g. ``(Priority)``."""
    exit_code: str
    """``code:signal``."""
    phase: Phase | None = None
    """None when the scheduler gave no state the parser knows."""
    code: str = ""
    """A short state code for queue counts (Slurm's ``PD``, ``R``, ``CG``...)."""
    uid: int | None = None
    """The owner's numeric uid as the scheduler records it: what ownership is decided on."""

    @property
    def status(self) -> str:
        """The state in the spec's capitalised form: ``Pending``, ``Cancelled``, ..."""
        word = self.state.split(" ", 1)[0].rstrip("+")
        return word.capitalize() if word else "Unknown"

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED


@dataclass(frozen=True)
class Ending:
    """A job that has ended, as accounting records it: what a job event and the kept
    detail of a finished job are made of."""

    rows: list[JobRecord]
    """The job's row, then its steps (as :meth:`Scheduler.merge_job_views` gives them)."""
    ended: float | None = None
    """When the job ended (epoch seconds), by the scheduler's own clock."""
    reason: str = ""
    """Why the job ended or was held, when the scheduler says (empty otherwise)."""

    @property
    def job(self) -> JobRecord:
        return self.rows[0]


@dataclass(frozen=True)
class OutputPaths:
    """Where a job writes its output, as the scheduler knows it now: paths expanded as
    the scheduler expands them on the node, and whose job it is."""

    uid: int
    """The owner's numeric uid: what access to the output is decided on."""
    user: str
    stdout: str
    stderr: str
    complete: bool = True
    """False while a path still depends on something the job has not got yet (its host)."""
    ended: bool = False
    """The job has ended (its paths are final once ``complete``)."""


class Scheduler(ABC):
    """Build and parse methods for one batch scheduler family.

    Registered under the ``hpcgate.schedulers`` entry-point group (see
    :mod:`hpcgate.plugins`) and named by ``machines.NAME.scheduler``. The ``parse_*``
    methods may run in a worker thread (a whole cluster's queue is parsed off the event
    loop), so they keep no state between calls.
    """

    @classmethod
    def from_config(cls, name: str, machine: MachineConfig) -> Scheduler:
        """The scheduler of machine ``name``; raises ConfigError for a wrong setting."""
        return cls()

    def stand_ins(self) -> Mapping[str, str]:
        """Programs of this scheduler that a runner may answer in a long-lived process of
        the user's instead of starting them: program (as in the argument vectors) -> path
        of a standard-library module whose ``run(argv, env, cwd)`` returns what the
        program would have ended with, ``(status, stdout, stderr)``, or None when the
        program itself must run (see :meth:`hpcgate.runners.base.Runner.take_stand_ins`).
        The runner reads each module once and hands its source to the user's process.
        None by default (an empty mapping)."""
        return {}

    @abstractmethod
    def submit_argv(self, script_path: str, options: JobOptions) -> list[str]:
        """Submit the script at ``script_path`` with ``options``."""

    @abstractmethod
    def parse_submit(self, result: Completed) -> str:
        """The new job's id; raises a GatewayError when the submission failed."""

    @abstractmethod
    def queue_argv(self, user: str) -> list[str]:
        """List ``user``'s jobs that are still in the queue."""

    @abstractmethod
    def all_jobs_argv(self) -> list[str]:
        """List every user's jobs still in the queue (one call, for the monitor)."""

    @abstractmethod
    def nodes_argv(self) -> list[str]:
        """Node counts by partition and state (one call, for the monitor)."""

    @abstractmethod
    def parse_nodes(self, result: Completed) -> dict[str, dict[str, int]]:
        """``{partition: {state: node count}}`` with short states: idle, alloc, mix, down..."""

    @abstractmethod
    def live_job_argv(self, jobid: str) -> list[str]:
        """Ask the controller about one job, including one that finished moments ago."""

    @abstractmethod
    def parse_queue(self, result: Completed) -> list[JobRecord]:
        """Parse the output of :meth:`queue_argv` or :meth:`live_job_argv`.

        A job the controller does not know gives an empty list, not an error.
        """

    @abstractmethod
    def history_argv(self, jobid: str) -> list[str]:
        """Ask accounting about one job and its steps."""

    @abstractmethod
    def parse_history(self, result: Completed) -> list[JobRecord]:
        """Parse :meth:`history_argv`: the job's row first, then its steps."""

    @abstractmethod
    def cancel_argv(self, jobid: str) -> list[str]:
        """Cancel one job."""

    @abstractmethod
    def check_cancel(self, result: Completed) -> None:
        """Raise a GatewayError when the cancel did not go through."""

    @abstractmethod
    def error_for(self, result: Completed) -> GatewayError:
        """Translate a failed scheduler command into the error a caller should see."""

    @abstractmethod
    def merge_job_views(
        self, jobid: str, live: JobRecord | None, history: list[JobRecord]
    ) -> list[JobRecord]:
        """The rows of the per-job view: the job, then its steps.

        ``live`` is what the controller says now (None once it has forgotten the job),
        ``history`` what accounting says, which may lag behind or not know the job yet.
        """

    def find_job(self, jobid: str, rows: list[JobRecord]) -> JobRecord | None:
        """The row of job ``jobid`` among the rows of a live listing (exact id by
        default; a scheduler may also map the id it printed at submit to the row)."""
        return next((row for row in rows if row.id == jobid), None)

    def history_is_final(self, jobid: str, history: list[JobRecord]) -> bool:
        """Whether accounting alone tells the job's whole story: it has ended and the
        record is settled, so the controller need not be asked. False when unsure."""
        return False

    def job_view(
        self,
        jobid: str,
        live: JobRecord | GatewayError | None,
        history: list[JobRecord] | GatewayError,
    ) -> list[JobRecord]:
        """The per-job view from what the controller and accounting answered, each given
        as its answer or the error it raised. Either may be down: a final accounting
        record answers without the controller, the controller's view answers without
        accounting, and with neither the error is raised, never a possibly wrong "no job".
        An empty list means that neither knows the job.
        """
        final = not isinstance(history, GatewayError) and self.history_is_final(jobid, history)
        if isinstance(live, GatewayError):
            if not final:
                raise live
            live = None
        if isinstance(history, GatewayError):
            if live is None:
                raise history
            history = []
        return self.merge_job_views(jobid, live, history)

    # -- whether accounting may not know a job yet -------------------------------------

    def accounting_lag_argv(self) -> list[str] | None:
        """Ask whether accounting may be behind the controller (records not yet stored).
        None (the default): this scheduler cannot tell, and a job neither the controller
        nor accounting knows is taken not to exist."""
        return None

    def parse_accounting_lag(self, result: Completed) -> bool:
        """Whether :meth:`accounting_lag_argv`'s output says that accounting may not have
        every record yet; raises a GatewayError when the call failed."""
        return False

    # -- finding a job by the tag it was submitted with (idempotent submits) -----------

    def tagged_jobs_argvs(
        self, user: str, within: float, jobid: str | None = None
    ) -> list[list[str]]:
        """Where to look for ``user``'s jobs submitted with a tag (``JobOptions.tag``) in
        the last ``within`` seconds, in order (e.g. the controller, then accounting); with
        ``jobid``, only that job. Empty (the default): this scheduler keeps no tags, so a
        lost submit cannot be found."""
        return []

    def parse_tagged_jobs(self, result: Completed, tag: str) -> list[str]:
        """The ids of the jobs whose tag is exactly ``tag`` in the output of one of
        :meth:`tagged_jobs_argvs`. A tag is user-writable text: it must be read so that
        no other job's tag can make a row, as every listing is (no second look is taken)."""
        return []

    def submitted_nothing(self, result: Completed) -> bool:
        """Whether a failed submit certainly created no job (e.g. the controller could
        not even be connected to), so that a retry with the same key may submit."""
        return False

    # -- jobs that ended, in one batched accounting call (job events) ------------------

    def ended_jobs_argv(self, since: float) -> list[str] | None:
        """Ask accounting, in one call for every user, about the jobs that ended since
        ``since`` (epoch seconds), with their steps. None (the default): this scheduler
        has no such call, and job events say only that a job left the queue."""
        return None

    def parse_ended_jobs(self, result: Completed) -> list[Ending]:
        """Parse :meth:`ended_jobs_argv`: one :class:`Ending` per job whose record is final."""
        return []

    def parse_ended_jobs_except(self, result: Completed, settled: Container[str]) -> list[Ending]:
        """:meth:`parse_ended_jobs` without the jobs in ``settled`` (their ends are already
        recorded; each accounting read overlaps the last): a scheduler may skip their
        rows unparsed."""
        return [ending for ending in self.parse_ended_jobs(result) if ending.job.id not in settled]

    # -- where a job writes its output (job output) ------------------------------------

    def output_paths_argv(self, jobid: str, *others: str) -> list[str] | None:
        """Ask the controller where job ``jobid`` (and the ``others``, in the same call)
        writes its output. None (the default): this scheduler cannot tell, and job output
        is not available on its machines."""
        return None

    def parse_output_paths(self, jobid: str, result: Completed) -> OutputPaths | None:
        """The output paths of ``jobid`` in :meth:`output_paths_argv`'s output, expanded
        as the scheduler expands them; None when the controller does not know the job.
        Raises a GatewayError when the call failed for another reason."""
        return None

    def parse_output_paths_of(
        self, jobids: Sequence[str], result: Completed
    ) -> dict[str, OutputPaths | None]:
        """:meth:`parse_output_paths` of each of ``jobids`` (asked in one call), by
        default one parse per job; a scheduler whose parse reads the whole listing
        should read it once."""
        return {jobid: self.parse_output_paths(jobid, result) for jobid in jobids}
