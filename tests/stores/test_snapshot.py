"""Snapshots: counts, health, and a JSON round trip."""

from __future__ import annotations

from dataclasses import replace

from hpcgate.schedulers.base import JobRecord
from hpcgate.schedulers.slurm import classified
from hpcgate.stores.snapshot import Snapshot

UIDS = {"alice": 1001, "bob": 1002}


def job(jobid: str, state: str, user: str = "alice") -> JobRecord:
    row = JobRecord(jobid, "n|x", user, state, "work", "0:00", 1, None, "(Priority)", "0:0")
    return classified(replace(row, uid=UIDS[user]))


SNAPSHOT = Snapshot(
    machine="ln3",
    taken=100.5,
    ok=True,
    probe_seconds=0.0123,
    probes=(True, False, True, True),
    data_taken=100.5,
    jobs=(
        job("1", "PENDING"),
        job("2", "RUNNING"),
        job("3", "RUNNING", "bob"),
        job("4", "COMPLETING"),
    ),
    partitions={"work": {"idle": 2, "alloc": 2}},
)


def test_queue_counts_by_state_code() -> None:
    assert SNAPSHOT.queue_counts() == {"PD": 1, "R": 2, "CG": 1}


def test_health_is_the_success_rate_of_recent_probes() -> None:
    assert SNAPSHOT.health == 0.75


def test_json_round_trip() -> None:
    assert Snapshot.from_json(SNAPSHOT.to_json()) == SNAPSHOT


def test_json_round_trip_after_indexing_with_any_job_name() -> None:
    # the indexes a snapshot builds when it is read are not part of what is stored
    names = ["", "é 名前 \U0001f600", 'a"b\\c', "line\nbreak\ttab\x01", "\ufffd"]
    jobs = tuple(replace(job(str(n), "RUNNING"), name=name) for n, name in enumerate(names))
    snapshot = Snapshot("ln3", 1.0, True, 0.1, (True,), data_taken=None, jobs=jobs)
    assert snapshot.queue_counts() and snapshot.jobs_by_uid and snapshot.job_of(1001, "1")
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    assert Snapshot.from_json(snapshot.to_json().decode()) == snapshot


def test_jobs_are_indexed_by_the_uid_slurm_recorded_not_the_name() -> None:
    forged = replace(job("5", "RUNNING"), user="bob")  # a name says bob; the uid, alice
    snapshot = Snapshot("ln3", 1.0, True, 0.1, (True,), jobs=(*SNAPSHOT.jobs, forged))
    assert [row.id for row in snapshot.jobs_by_uid[UIDS["bob"]]] == ["3"]
    assert "5" in [row.id for row in snapshot.jobs_by_uid[UIDS["alice"]]]
