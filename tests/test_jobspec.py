"""Validation of the submit fields and the spec's jobconf."""

from __future__ import annotations

import pytest

from hpcgate.errors import BadRequest
from hpcgate.jobspec import JobOptions, parse_jobconf, parse_jobid, parse_submission

SCRIPT = "#!/bin/bash\ntrue\n"


def test_jobconf_maps_every_key() -> None:
    options = parse_jobconf(
        '{"job_wdir": "~/w", "job_name": "hello", "time_limit": 10, "partition": "work",'
        ' "scale_cores": 4, "scale_memGB": 1.5, "scale_Nodes": 2, "jobfile_args": "a \'b c\'"}'
    )
    assert options == JobOptions(
        working_dir="~/w",
        name="hello",
        time_limit_minutes=10,
        partition="work",
        cores=4,
        memory_mb=1536,
        nodes=2,
        script_args=("a", "b c"),
    )


def test_jobconf_may_be_absent_an_object_or_have_nulls() -> None:
    assert parse_jobconf(None) == JobOptions()
    assert parse_jobconf("") == JobOptions()
    assert parse_jobconf({"job_name": "x", "time_limit": None}) == JobOptions(name="x")


def test_numbers_as_strings_are_accepted_from_forms() -> None:
    assert parse_jobconf({"time_limit": "15", "scale_Nodes": 2.0}).time_limit_minutes == 15


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"bogus": 1}, "unknown jobconf key 'bogus'"),
        ({"time_limit": 1.5}, "whole number"),
        ({"time_limit": 10**9}, "between 1 and"),
        ({"scale_memGB": float("nan")}, "number of gigabytes"),
        ({"scale_memGB": True}, "number of gigabytes"),
        ({"job_name": 5}, "must be a string"),
        ({"job_name": "x" * 201}, "longer than 200"),
        ({"job_name": "tab\there"}, "control characters"),
        ({"partition": "a,b"}, "may hold only letters, digits and _ . + -"),
        ({"partition": "a" * 65}, "longer than 64"),
        ({"scale_cores": 0}, "between 1 and 10000000"),
        ({"scale_memGB": 0}, "more than 0 and at most 1000000"),
        ({"jobfile_args": ["a"] * 1001}, "more than 1000 arguments"),
        ({"job_wdir": ""}, "must not be empty"),
        ({"jobfile_args": "unbalanced 'quote"}, "cannot be split"),
        ({"jobfile_args": ["ok", "new\nline"]}, "jobfile_args[1]"),
        ({"jobfile_args": 7}, "string or a list"),
    ],
)
def test_bad_jobconf(conf: dict[str, object], words: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_jobconf(conf)
    assert words in raised.value.message


def test_submission_with_a_script_and_path() -> None:
    submission = parse_submission(
        {"jobscript": SCRIPT, "jobfilepath": "~/p/job.sh", "jobconf": '{"job_name": "h"}'},
        max_script_bytes=1000,
    )
    assert submission.script == SCRIPT and submission.script_path == "~/p/job.sh"
    assert submission.options.name == "h" and submission.jobfile is None


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"jobscript": SCRIPT, "jobfile": "/x"}, "not both"),
        ({}, "nothing to submit"),
        ({"jobfile": "/x", "jobfilepath": "/y"}, "jobfilepath goes with jobscript"),
        ({"jobscript": "echo"}, "interpreter line"),
        ({"jobscript": "#!/bin/sh\n\x00"}, "NUL"),
        ({"jobscript": "#!/bin/sh\n" + "x" * 2000}, "larger than 1000 bytes"),
        ({"jobfile": "/a\nb"}, "control characters"),
    ],
)
def test_bad_submissions(fields: dict[str, object], words: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_submission(fields, max_script_bytes=1000)
    assert words in raised.value.message


@pytest.mark.parametrize("jobid", ["1", "4816214", "12_3", 77])
def test_good_jobids(jobid: object) -> None:
    assert parse_jobid(jobid) == str(jobid)


@pytest.mark.parametrize(
    "jobid", [None, "", "x", "1;2", "--all", "1.batch", True, "1" * 13, "1_", "1_2_3"]
)
def test_bad_jobids(jobid: object) -> None:
    with pytest.raises(BadRequest):
        parse_jobid(jobid)
