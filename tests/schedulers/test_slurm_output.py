"""Output paths from squeue, expanded as slurmstepd expands them: checked against the files
Slurm itself wrote on the real cluster."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcgate.errors import Unavailable
from hpcgate.process import Completed
from hpcgate.schedulers.slurm import OutputRow, Slurm, output_argv, parse_output_rows, row_of
from tests.conftest import wait_for


@pytest.fixture
def job_dir(cluster: None) -> Iterator[Path]:
    path = Path(f"/home/alice/slurm-output-{secrets.token_hex(4)}")
    subprocess.run(["runuser", "-u", "alice", "--", "mkdir", str(path)], check=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def squeue(argv: list[str]) -> Completed:
    done = subprocess.run(argv, capture_output=True, text=True)
    return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize(
    ("pattern", "options"),
    [
        ("%x-%j-%u-%%.out", []),
        ("out-%A_%a-%3a.txt", ["--array=1-2"]),
        ("plain-%5j-%J-%s-%n-%t.log", []),
        ("back\\slash-%j.out", []),
    ],
)
def test_expanded_paths_are_the_files_slurm_wrote(
    job_dir: Path, pattern: str, options: list[str]
) -> None:
    script = job_dir / "job.sh"
    script.write_text("#!/bin/bash\necho hi\n")
    script.chmod(0o755)
    name = "a name; with | odd\tchars"
    submitted = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", f"--chdir={job_dir}",
         f"--job-name={name}", f"--output={pattern}", *options, str(script)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    jobid = submitted.stdout.strip().split(";")[0]
    rows = parse_output_rows(squeue(output_argv(Slurm(), jobid)))
    row = row_of(jobid, rows)
    assert row is not None and row.uid == int(subprocess.check_output(["id", "-u", "alice"]))
    assert row.name == name
    if not all(r.complete for r in rows):  # an array pending as one row: wait for its tasks

        def split() -> list[OutputRow] | None:
            found = parse_output_rows(squeue(output_argv(Slurm(), jobid)))
            return found if len(found) > 1 and all(r.complete for r in found) else None

        rows = wait_for(split, timeout=60, what="the array's tasks")
    expected = sorted({r.expand(r.stdout) for r in rows})
    wait_for(
        lambda: all(Path(path).exists() for path in expected),
        timeout=60,
        what=f"Slurm to write {expected}",
    )
    written = sorted(str(p) for p in job_dir.iterdir() if p.name != "job.sh")
    assert written == expected


def test_an_unknown_job_has_no_row(cluster: None) -> None:
    assert parse_output_rows(squeue(output_argv(Slurm(), "999999999"))) == []


def test_the_scheduler_interface_gives_the_expanded_paths(job_dir: Path) -> None:
    script = job_dir / "job.sh"
    script.write_text("#!/bin/bash\necho hi\n")
    submitted = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", f"--chdir={job_dir}",
         "--job-name=iface", "--output=%x-%j.out", "--error=err-%u.txt", str(script)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    jobid = submitted.stdout.strip()
    slurm = Slurm()
    argv = slurm.output_paths_argv(jobid)
    assert argv is not None
    paths = slurm.parse_output_paths(jobid, squeue(argv))
    assert paths is not None
    assert (paths.user, paths.stdout, paths.stderr) == (
        "alice",
        f"{job_dir}/iface-{jobid}.out",
        f"{job_dir}/err-alice.txt",
    )
    unknown = slurm.output_paths_argv("999999999")
    assert unknown is not None
    assert slurm.parse_output_paths("999999999", squeue(unknown)) is None
    broken = Completed(("squeue",), 1, "", "squeue: error: Unable to contact slurm controller")
    with pytest.raises(Unavailable):
        slurm.parse_output_paths(jobid, broken)


def test_one_lookup_of_several_jobs_gives_each_its_own_row(cluster: None) -> None:
    """What the batched lookup after submits relies on: a plain job, an array and a het
    job asked in one squeue, each found as itself (never another job's first row)."""

    def sbatch(*options: str) -> str:
        done = subprocess.run(
            ["runuser", "-u", "alice", "--", "sbatch", "--parsable", "--hold", *options],
            capture_output=True, text=True, check=True, cwd="/tmp",
        )  # fmt: skip
        return done.stdout.strip().split(";")[0]

    plain = sbatch("--wrap=true")
    array = sbatch("--array=1-3", "--wrap=true")
    het = sbatch("-n1", "--wrap=true", ":", "-n1")
    try:
        rows = parse_output_rows(squeue(output_argv(Slurm(), plain, array, het)))
        found = {jobid: row_of(jobid, rows) for jobid in (plain, array, het, f"{het}+1")}
        assert {jobid: row.jobid if row else None for jobid, row in found.items()} == {
            plain: plain,
            array: array,
            het: het,
            f"{het}+1": str(int(het) + 1),
        }
        assert row_of("999999999", rows) is None
    finally:
        subprocess.run(["scancel", plain, array, het], check=False)
