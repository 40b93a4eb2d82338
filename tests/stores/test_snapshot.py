"""Snapshots and surveys: the tally, health, each owner's jobs, and JSON round trips."""

from __future__ import annotations

from dataclasses import replace

import orjson

from hpcgate.schedulers.base import JobRecord
from hpcgate.schedulers.slurm import classified
from hpcgate.stores.snapshot import JobTally, OwnJobs, Snapshot, Survey, decode_jobs

UIDS = {"alice": 1001, "bob": 1002}


def job(
    jobid: str, state: str, user: str = "alice", *, partition: str = "work", reason: str = ""
) -> JobRecord:
    row = JobRecord(
        jobid, "n|x", user, state, partition, "0:00", 1, None, reason or "(Priority)", "0:0"
    )
    return classified(replace(row, uid=UIDS[user]))


SURVEY = Survey(
    machine="ln3",
    taken=100.5,
    ok=True,
    probe_seconds=0.0123,
    probes=(True, False, True, True),
    data_taken=100.5,
    jobs=(
        job("1", "PENDING"),
        job("2", "RUNNING"),
        job("3", "RUNNING", "bob", partition="debug"),
        job("4", "COMPLETING"),
        job("5", "PENDING", "bob", reason="(Dependency)"),
    ),
    partitions={"work": {"idle": 2, "alloc": 2}},
)


def test_a_survey_tallies_its_jobs_by_code_by_partition_and_state_and_dependency() -> None:
    assert SURVEY.queue_counts() == {"PD": 2, "R": 2, "CG": 1}
    assert SURVEY.tally.states == {
        ("work", "PENDING"): 2,
        ("work", "RUNNING"): 1,
        ("debug", "RUNNING"): 1,
        ("work", "COMPLETING"): 1,
    }
    assert SURVEY.tally.on_dependency == {"PENDING": 1}


def test_health_is_the_success_rate_of_recent_probes() -> None:
    assert SURVEY.health == 0.75


def test_what_a_store_keeps_of_a_survey_round_trips_without_the_jobs() -> None:
    head = SURVEY.head()
    assert type(head) is Snapshot and head.tally == SURVEY.tally
    raw = SURVEY.to_json()
    assert b'"jobs"' not in raw and b"n|x" not in raw, "the jobs are kept apart"
    assert Snapshot.from_json(raw) == head
    assert Snapshot.from_json(raw.decode()) == head


def test_a_snapshot_written_whole_by_an_earlier_version_is_read_with_its_tally() -> None:
    earlier = orjson.loads(SURVEY.to_json()) | {"jobs": SURVEY.jobs}
    del earlier["tally"]
    assert Snapshot.from_json(orjson.dumps(earlier)) == SURVEY.head()


def test_each_owners_jobs_round_trip_with_any_job_name() -> None:
    names = ["", "é 名前 \U0001f600", 'a"b\\c', "line\nbreak\ttab\x01", "\ufffd"]
    jobs = tuple(replace(job(str(n), "RUNNING"), name=name) for n, name in enumerate(names))
    survey = Survey("ln3", 1.0, True, 0.1, (True,), jobs=jobs)
    (raw,) = survey.encoded_jobs().values()
    assert decode_jobs(raw) == jobs
    assert decode_jobs(raw.decode()) == jobs


def test_jobs_are_grouped_by_the_uid_slurm_recorded_not_the_name() -> None:
    forged = replace(job("6", "RUNNING"), user="bob")  # a name says bob; the uid, alice
    nobody = replace(job("7", "RUNNING"), uid=None)
    survey = Survey("ln3", 1.0, True, 0.1, (True,), jobs=(*SURVEY.jobs, forged, nobody))
    assert [row.id for row in survey.jobs_of(UIDS["bob"]).jobs] == ["3", "5"]
    assert [row.id for row in survey.jobs_of(UIDS["alice"]).jobs] == ["1", "2", "4", "6"]
    assert set(survey.own_jobs()) == set(UIDS.values()), "a job without a uid is nobody's"
    assert survey.jobs_of(4242) == OwnJobs(1.0), "no jobs is an answer, at the survey's time"
    assert survey.jobs_of(UIDS["alice"]).find("6") == forged
    assert survey.jobs_of(UIDS["alice"]).find("3") is None


def test_an_empty_tally_round_trips() -> None:
    assert JobTally.from_dict(JobTally().to_dict()) == JobTally()
