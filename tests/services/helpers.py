"""The fast tier's fakes: accounts, records and a Slurm that reads prepared records.

:class:`RecordsSlurm` is the real :class:`~hpcgate.schedulers.slurm.Slurm` (its merge,
finality, submit, cancel and error rules) except that its listings are JSON-encoded
:class:`JobRecord` lists, so service tests do not depend on Slurm's output format.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from hpcgate.accounts import UnixAccount
from hpcgate.errors import Unavailable
from hpcgate.process import Completed, Limits
from hpcgate.runners.replay import ReplayRunner, ok
from hpcgate.schedulers.base import Ending, JobRecord, Phase
from hpcgate.schedulers.slurm import Slurm, classified
from hpcgate.services.machine import Machine
from hpcgate.services.queue_cache import QueueCache
from hpcgate.services.submits import IdempotentSubmits
from hpcgate.stores.memory import MemoryIdempotencyStore, MemoryStore
from hpcgate.stores.snapshot import Snapshot, Survey

ALICE = UnixAccount("alice", 1001, 1001, (1001,), "/home/alice", "/bin/bash")
BOB = UnixAccount("bob", 1002, 1003, (1003,), "/home/bob", "/bin/bash")
LIMITS = Limits(timeout=5, output_bytes=1 << 20)


def record(
    jobid: str,
    state: str = "RUNNING",
    *,
    owner: UnixAccount = ALICE,
    name: str = "job",
    partition: str = "work",
    elapsed: str = "0:05",
    nodelist: str = "node1",
    exit_code: str = "0:0",
) -> JobRecord:
    """A job or step row as Slurm's parser makes it, owned by ``owner``'s uid."""
    return classified(
        JobRecord(
            id=jobid,
            name=name,
            user=owner.name,
            state=state,
            partition=partition,
            elapsed=elapsed,
            nodes=1,
            tasks=None,
            nodelist=nodelist,
            exit_code=exit_code,
            uid=owner.uid,
        )
    )


def placeholder(jobid: str, state: str = "COMPLETED") -> JobRecord:
    """Accounting's row for a job it has not synced yet: no partition, a stale state."""
    return record(jobid, state, name="allocation", partition="", nodelist="None assigned")


def listing(*records: JobRecord) -> str:
    """The stdout :class:`RecordsSlurm` parses into ``records``."""
    return json.dumps([asdict(row) for row in records])


def _decoded(stdout: str) -> list[JobRecord]:
    rows: list[dict[str, Any]] = json.loads(stdout or "[]")
    return [JobRecord(**(row | {"phase": row["phase"] and Phase(row["phase"])})) for row in rows]


class RecordsSlurm(Slurm):
    """Slurm whose listings are plain argv and JSON records; everything else is real."""

    def queue_argv(self, user: str) -> list[str]:
        return ["squeue", f"--user={user}"]

    def all_jobs_argv(self) -> list[str]:
        return ["squeue", "--all"]

    def live_job_argv(self, jobid: str) -> list[str]:
        return ["squeue", "--states=all", f"--jobs={jobid}"]

    def history_argv(self, jobid: str) -> list[str]:
        return ["sacct", f"--jobs={jobid}"]

    def nodes_argv(self) -> list[str]:
        return ["sinfo"]

    def parse_queue(self, result: Completed) -> list[JobRecord]:
        if not result.ok:
            if "Invalid job id specified" in result.stderr:
                return []
            raise self.error_for(result)
        return _decoded(result.stdout)

    def parse_history(self, result: Completed) -> list[JobRecord]:
        if not result.ok:
            raise self.error_for(result)
        return _decoded(result.stdout)

    def tagged_jobs_argvs(
        self, user: str, within: float, jobid: str | None = None
    ) -> list[list[str]]:
        return [["squeue", "--tags", f"--user={user}", *([f"--jobs={jobid}"] if jobid else [])]]

    def parse_tagged_jobs(self, result: Completed, tag: str) -> list[str]:
        """The output is ``{jobid: tag}`` as JSON."""
        tags: dict[str, str] = json.loads(result.stdout or "{}")
        return [jobid for jobid, its_tag in tags.items() if its_tag == tag]

    def parse_nodes(self, result: Completed) -> dict[str, dict[str, int]]:
        if not result.ok:
            raise self.error_for(result)
        counts: dict[str, dict[str, int]] = json.loads(result.stdout)
        return counts

    def ended_jobs_argv(self, since: float) -> list[str]:
        return ["sacct", "--ended"]

    def parse_ended_jobs(self, result: Completed) -> list[Ending]:
        """The output is the ended jobs' rows, each job's row before its steps."""
        if not result.ok:
            raise self.error_for(result)
        jobs: dict[str, list[JobRecord]] = {}
        for row in _decoded(result.stdout):
            jobs.setdefault(row.id.split(".", 1)[0], []).append(row)
        return [Ending(rows) for rows in jobs.values()]


CONTROLLER_DOWN = Unavailable("the scheduler cannot be reached: slurmctld is down")


def machine(
    runner: ReplayRunner,
    *,
    store: MemoryStore | None = None,
    max_age: float = 60.0,
    submits: IdempotentSubmits | None = None,
) -> Machine:
    """Machine ln3 on ``runner``; with ``store``, queue listings come from its snapshots."""
    return Machine(
        "ln3",
        runner,
        RecordsSlurm(),
        command_limits=LIMITS,
        scheduler_limits=LIMITS,
        queue_cache=None if store is None else QueueCache(store, "ln3", max_age),
        submits=submits or IdempotentSubmits(MemoryIdempotencyStore(), ttl=60, wait=5),
    )


async def put_snapshot(store: MemoryStore, *jobs: JobRecord, age: float = 0.0) -> Snapshot:
    """A monitor's snapshot of ln3 listing ``jobs``, taken ``age`` seconds ago."""
    taken = time.time() - age
    snapshot = Survey("ln3", taken, True, 0.01, (True,), data_taken=taken, jobs=tuple(jobs))
    await store.put(snapshot, ttl=3600)
    return snapshot


def accept_writes(runner: ReplayRunner) -> None:
    """Let the runner write files (``dd``), make directories and remove files."""
    for program in ("dd", "mkdir", "rm"):
        runner.on(program, ok())


async def until(condition: Callable[[], bool], *, turns: int = 1000) -> None:
    """Let other tasks run until ``condition`` holds (no clock involved)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")
