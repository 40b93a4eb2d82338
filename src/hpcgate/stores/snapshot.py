"""A machine's state at one moment, as a monitor saw it: the unit the store keeps.

A monitor's probe is a :class:`Survey`: every job in the queue, the node counts, and how
the probe went. A store keeps it in two parts, because its readers need different
parts of it and a full cluster's job list is large (20 MB at 100,000 jobs): the
:class:`Snapshot`, what the status, health and metrics views read on every request
(the probe's outcome and the jobs' :class:`JobTally`), and each user's jobs apart
(:class:`OwnJobs`), what that user's queue view reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import orjson

from hpcgate.schedulers.base import JobRecord, Phase

DEPENDENCY_REASON = "(Dependency)"
"""What squeue shows in a pending job's node list while it waits for another job."""


@dataclass(frozen=True)
class JobTally:
    """How many jobs a survey listed, counted the ways the status and metrics views ask."""

    codes: dict[str, int] = field(default_factory=dict)
    """By short state code, e.g. ``{"PD": 1, "R": 1111}``."""
    states: dict[tuple[str, str], int] = field(default_factory=dict)
    """By partition and Slurm state, e.g. ``{("work", "PENDING"): 1}``."""
    on_dependency: dict[str, int] = field(default_factory=dict)
    """Jobs whose reason is a dependency on another job, by Slurm state."""

    @classmethod
    def of(cls, jobs: Iterable[JobRecord]) -> JobTally:
        codes: dict[str, int] = {}
        states: dict[tuple[str, str], int] = {}
        on_dependency: dict[str, int] = {}
        for job in jobs:
            codes[job.code] = codes.get(job.code, 0) + 1
            key = (job.partition, job.state)
            states[key] = states.get(key, 0) + 1
            if job.nodelist == DEPENDENCY_REASON:
                on_dependency[job.state] = on_dependency.get(job.state, 0) + 1
        return cls(codes, states, on_dependency)

    def to_dict(self) -> dict[str, Any]:
        return {
            "codes": self.codes,
            "states": [[partition, state, n] for (partition, state), n in self.states.items()],
            "on_dependency": self.on_dependency,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobTally:
        return cls(
            dict(data["codes"]),
            {(partition, state): n for partition, state, n in data["states"]},
            dict(data["on_dependency"]),
        )


@dataclass(frozen=True)
class Snapshot:
    """One probe of one machine: how it went, the node counts, and its jobs' tally.

    ``taken`` is when the probe started; ``data_taken`` when the scheduler data (jobs,
    nodes) was last read successfully, which is older than ``taken`` after a failed
    probe (whose snapshot carries the last good data). A user's queue view judges
    freshness by the ``taken`` of the survey its jobs come from (:class:`OwnJobs`).
    """

    machine: str
    taken: float
    ok: bool
    probe_seconds: float
    probes: tuple[bool, ...]
    """The recent probe outcomes, newest last; ``health`` is their success rate."""
    error: str = ""
    data_taken: float | None = None
    partitions: dict[str, dict[str, int]] = field(default_factory=dict)
    tally: JobTally = field(default_factory=JobTally)

    @property
    def health(self) -> float:
        return round(sum(self.probes) / len(self.probes), 3) if self.probes else 0.0

    def queue_counts(self) -> dict[str, int]:
        """Jobs by short state code, e.g. ``{"PD": 1, "R": 1111}``."""
        return dict(self.tally.codes)

    def head(self) -> Snapshot:
        """This snapshot without anything a subclass adds (what a store keeps of it)."""
        if type(self) is Snapshot:
            return self
        return Snapshot(**{name: getattr(self, name) for name in _HEAD_FIELDS})

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "machine": self.machine,
                "taken": self.taken,
                "ok": self.ok,
                "probe_seconds": self.probe_seconds,
                "probes": [int(ok) for ok in self.probes],
                "error": self.error,
                "data_taken": self.data_taken,
                "partitions": self.partitions,
                "tally": self.tally.to_dict(),
            }
        )

    @staticmethod
    def from_json(raw: bytes | str) -> Snapshot:
        data: dict[str, Any] = orjson.loads(raw)
        if "tally" in data:
            tally = JobTally.from_dict(data["tally"])
        else:  # written by an earlier hpcgate, with every job inside: counted once here
            tally = JobTally.of(record_from_dict(job) for job in data.get("jobs", ()))
        return Snapshot(
            machine=data["machine"],
            taken=data["taken"],
            ok=data["ok"],
            probe_seconds=data["probe_seconds"],
            probes=tuple(bool(ok) for ok in data["probes"]),
            error=data.get("error", ""),
            data_taken=data.get("data_taken"),
            partitions=data.get("partitions", {}),
            tally=tally,
        )


_HEAD_FIELDS = tuple(f.name for f in fields(Snapshot))


@dataclass(frozen=True)
class OwnJobs:
    """One user's jobs in the latest survey of a machine, and when that survey read them."""

    taken: float
    jobs: tuple[JobRecord, ...] = ()

    @cached_property
    def _by_id(self) -> dict[str, JobRecord]:
        return {job.id: job for job in self.jobs}

    def find(self, jobid: str) -> JobRecord | None:
        """The job ``jobid`` if it is among these (indexed once)."""
        return self._by_id.get(jobid)


@dataclass(frozen=True)
class Survey(Snapshot):
    """A successful probe with every job it listed: what a monitor writes. Its tally is
    always counted from ``jobs`` (one given to the constructor is replaced)."""

    jobs: tuple[JobRecord, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tally", JobTally.of(self.jobs))

    @cached_property
    def _by_uid(self) -> dict[int, OwnJobs]:
        grouped: dict[int, list[JobRecord]] = {}
        for job in self.jobs:
            if job.uid is not None:
                grouped.setdefault(job.uid, []).append(job)
        return {uid: OwnJobs(self.taken, tuple(jobs)) for uid, jobs in grouped.items()}

    def own_jobs(self) -> dict[int, OwnJobs]:
        """Each owner's jobs by the uid the scheduler recorded (never by a name a user
        could forge), grouped once per survey. A job without a uid is nobody's."""
        return self._by_uid

    def jobs_of(self, uid: int) -> OwnJobs:
        """``uid``'s jobs in this survey (none is an answer too)."""
        return self._by_uid.get(uid) or OwnJobs(self.taken)

    def encoded_jobs(self) -> dict[int, bytes]:
        """Each owner's jobs as JSON, as a store keeps them apart. orjson encodes the
        records (dataclasses) itself: 0.1 s for 100,000 jobs, where ``asdict`` took 1.3 s."""
        return {uid: orjson.dumps(own.jobs) for uid, own in self._by_uid.items()}


def decode_jobs(raw: bytes | str) -> tuple[JobRecord, ...]:
    """Records encoded by :meth:`Survey.encoded_jobs`."""
    return tuple(record_from_dict(job) for job in orjson.loads(raw))


_PHASES = {phase.value: phase for phase in Phase}


def record_from_dict(fields: dict[str, Any]) -> JobRecord:
    """A record from its JSON fields (users' job lists, ended jobs' kept records). Built
    by position, the phase looked up in a dict: 100,000 of them in a full cluster's
    survey, where ``JobRecord(**fields)`` with ``Phase(...)`` took a fifth longer."""
    phase = fields.get("phase")
    return JobRecord(
        fields["id"],
        fields["name"],
        fields["user"],
        fields["state"],
        fields["partition"],
        fields["elapsed"],
        fields["nodes"],
        fields["tasks"],
        fields["nodelist"],
        fields["exit_code"],
        None if phase is None else _PHASES[phase],
        fields.get("code", ""),
        fields.get("uid"),
    )
