"""Typed results: what the gateway's column-oriented JSON means, as objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hpcgate import contract

FINAL_STATUSES = frozenset(
    {
        "Boot_fail",
        "Cancelled",
        "Completed",
        "Deadline",
        "Failed",
        "Node_fail",
        "Out_of_memory",
        "Preempted",
        "Revoked",
        "Timeout",
    }
)


@dataclass(frozen=True)
class CommandResult:
    """A command line's stdout, stderr and exit code."""

    output: str
    error: str
    retcode: int


@dataclass(frozen=True)
class Step:
    """One step of a job (``<id>.batch``, ``<id>.0``, ...)."""

    id: str
    name: str
    state: str
    elapsed: str
    nodes: int
    tasks: int | None
    exit_code: str
    nodelist: str = ""


@dataclass(frozen=True)
class Job:
    """A batch job. ``state`` is capitalised (``Pending``, ``Running``, ``Completed``...)."""

    id: str
    name: str
    state: str
    partition: str
    nodes: int
    elapsed: str
    user: str = ""
    nodelist: str = ""
    exit_code: str = ""
    steps: tuple[Step, ...] = field(default=())

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.state == "Completed" and self.exit_code in ("", "0:0")

    @property
    def return_code(self) -> int | None:
        """The script's exit status from ``exit_code`` (``code:signal``), if known."""
        code, _, _ = self.exit_code.partition(":")
        return int(code) if code.isdigit() else None


@dataclass(frozen=True)
class MachineStatus:
    """One machine in ``GET /api/job``."""

    name: str
    queue: dict[str, int]
    probe_seconds: float | None
    health: float | None
    partitions: dict[str, dict[str, int]]
    updated: datetime | None
    stale: bool
    error: str = ""


def rows(columns: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Column-oriented output (``{field: {id: value}}``) as one dict per id, in order."""
    ids = list(columns.get("id", {}))
    return [{name: values.get(jobid) for name, values in columns.items()} for jobid in ids]


def _job(row: dict[str, Any], jobid: str, steps: tuple[Step, ...] = ()) -> Job:
    """A job from one row of a column-oriented listing (queue or per-job view)."""
    return Job(
        id=jobid,
        name=row.get("name") or "",
        state=row.get("status") or "",
        partition=row.get("partition") or "",
        nodes=int(row.get("nodes") or 0),
        elapsed=row.get("time") or "",
        user=row.get("user") or "",
        nodelist=row.get("nodelist") or "",
        exit_code=row.get("exitcode") or "",
        steps=steps,
    )


def queue_from_columns(columns: dict[str, dict[str, Any]]) -> list[Job]:
    return [_job(row, str(row["id"])) for row in rows(columns)]


def job_from_columns(jobid: str, columns: dict[str, dict[str, Any]]) -> Job:
    """The per-job view: the row whose id is ``jobid`` is the job, the others its steps."""
    job_row: dict[str, Any] = {}
    steps = []
    for row in rows(columns):
        if str(row["id"]) == jobid:
            job_row = row
            continue
        tasks = row.get("tasks")
        steps.append(
            Step(
                id=str(row["id"]),
                name=row.get("name") or "",
                state=row.get("status") or "",
                elapsed=row.get("time") or "",
                nodes=int(row.get("nodes") or 0),
                tasks=int(tasks) if isinstance(tasks, int | float) else None,
                exit_code=row.get("exitcode") or "",
                nodelist=row.get("nodelist") or "",
            )
        )
    return _job(job_row, jobid, tuple(steps))


def status_from_output(output: dict[str, dict[str, Any]]) -> list[MachineStatus]:
    machines = []
    for name, entry in output.items():
        queue = dict(entry.get("queue") or {})
        probe_seconds = queue.pop("time", None)
        health = queue.pop("health", None)
        updated = entry.get("updated")
        machines.append(
            MachineStatus(
                name=name,
                queue={state: int(count) for state, count in queue.items()},
                probe_seconds=probe_seconds,
                health=health,
                partitions=entry.get("info") or {},
                updated=contract.parse_timestamp(updated) if updated else None,
                stale=bool(entry.get("stale")),
                error=entry.get("error") or "",
            )
        )
    return machines
