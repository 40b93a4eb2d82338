"""A machine's state at one moment, as a monitor saw it: the unit the store keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from hpcgate.schedulers.base import JobRecord, Phase


@dataclass(frozen=True)
class Snapshot:
    """One probe of one machine, with the last good scheduler data.

    ``taken`` is when the probe started; ``data_taken`` when the scheduler data (jobs,
    nodes) was last read successfully, which is older than ``taken`` after a failed
    probe. Queue views judge freshness by ``data_taken``.
    """

    machine: str
    taken: float
    ok: bool
    probe_seconds: float
    probes: tuple[bool, ...]
    """The recent probe outcomes, newest last; ``health`` is their success rate."""
    error: str = ""
    data_taken: float | None = None
    jobs: tuple[JobRecord, ...] = ()
    partitions: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def health(self) -> float:
        return round(sum(self.probes) / len(self.probes), 3) if self.probes else 0.0

    @cached_property
    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.code] = counts.get(job.code, 0) + 1
        return counts

    def queue_counts(self) -> dict[str, int]:
        """Jobs by short state code, e.g. ``{"PD": 1, "R": 1111}`` (counted once)."""
        return dict(self._counts)

    @cached_property
    def jobs_by_uid(self) -> dict[int, list[JobRecord]]:
        """Each owner's jobs by the uid the scheduler recorded (never by a name a user
        could forge), indexed once per snapshot for the queue views."""
        index: dict[int, list[JobRecord]] = {}
        for job in self.jobs:
            if job.uid is not None:
                index.setdefault(job.uid, []).append(job)
        return index

    @cached_property
    def _jobs_by_key(self) -> dict[tuple[int, str], JobRecord]:
        return {(job.uid, job.id): job for job in self.jobs if job.uid is not None}

    def job_of(self, uid: int, jobid: str) -> JobRecord | None:
        """The job ``jobid`` if this snapshot lists it as ``uid``'s (indexed once)."""
        return self._jobs_by_key.get((uid, jobid))

    def to_json(self) -> bytes:
        # orjson encodes the records (dataclasses) itself: 0.1 s for 100,000 jobs, where
        # asdict() and json took 1.3 s. Fields by name: the cached indexes stay out.
        return orjson.dumps(
            {
                "machine": self.machine,
                "taken": self.taken,
                "ok": self.ok,
                "probe_seconds": self.probe_seconds,
                "probes": [int(ok) for ok in self.probes],
                "error": self.error,
                "data_taken": self.data_taken,
                "jobs": self.jobs,
                "partitions": self.partitions,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Snapshot:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            machine=data["machine"],
            taken=data["taken"],
            ok=data["ok"],
            probe_seconds=data["probe_seconds"],
            probes=tuple(bool(ok) for ok in data["probes"]),
            error=data.get("error", ""),
            data_taken=data.get("data_taken"),
            jobs=tuple(record_from_dict(job) for job in data.get("jobs", ())),
            partitions=data.get("partitions", {}),
        )


_PHASES = {phase.value: phase for phase in Phase}


def record_from_dict(fields: dict[str, Any]) -> JobRecord:
    """A record from its JSON fields (snapshots, ended jobs' kept records). Built by
    position, the phase looked up in a dict: 100,000 of them per snapshot of a full
    cluster, where ``JobRecord(**fields)`` with ``Phase(...)`` took a fifth longer."""
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
