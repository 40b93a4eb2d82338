"""What hpcgate needs from a batch scheduler: pure argument builders and output parsers.

A scheduler module never runs anything. It builds argument vectors and parses what they
print; the machine layer runs them as the user through a runner. Adding a scheduler means
adding one module that implements :class:`Scheduler`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from hpcgate.errors import GatewayError
from hpcgate.jobspec import JobOptions
from hpcgate.runners.base import Completed


@dataclass(frozen=True)
class JobRecord:
    """One row about a job, or about one of its steps, as the scheduler reports it."""

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

    @property
    def status(self) -> str:
        """The state in the spec's capitalised form: ``Pending``, ``Cancelled``, ..."""
        word = self.state.split(" ", 1)[0].rstrip("+")
        return word.capitalize() if word else "Unknown"

    @property
    def finished(self) -> bool:
        return self.status.upper() in FINAL_STATES

    @property
    def short_state(self) -> str:
        """The two-letter code squeue uses (``PD``, ``R``, ``CG``...), for queue counts."""
        word = self.status.upper()
        return STATE_CODES.get(word, word[:2] or "??")


FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


STATE_CODES = {
    "BOOT_FAIL": "BF",
    "CANCELLED": "CA",
    "COMPLETED": "CD",
    "COMPLETING": "CG",
    "CONFIGURING": "CF",
    "DEADLINE": "DL",
    "FAILED": "F",
    "NODE_FAIL": "NF",
    "OUT_OF_MEMORY": "OOM",
    "PENDING": "PD",
    "PREEMPTED": "PR",
    "REQUEUED": "RQ",
    "REQUEUE_FED": "RF",
    "REQUEUE_HOLD": "RH",
    "RESIZING": "RS",
    "REVOKED": "RV",
    "RUNNING": "R",
    "SIGNALING": "SI",
    "SPECIAL_EXIT": "SE",
    "STAGE_OUT": "SO",
    "STOPPED": "ST",
    "SUSPENDED": "S",
    "TIMEOUT": "TO",
}


class Scheduler(ABC):
    """Build and parse methods for one batch scheduler family."""

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

    def history_is_final(self, jobid: str, history: list[JobRecord]) -> bool:
        """Whether accounting alone tells the job's whole story: it has ended and the
        record is settled, so the controller need not be asked. False when unsure."""
        return False
