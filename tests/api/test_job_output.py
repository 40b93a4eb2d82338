"""GET /api/job/<machine>/<jobid>/output: read and follow what a job printed, as its owner."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import error_of, ok_output, wait_for


@pytest.fixture
def job_dir() -> Iterator[Path]:
    path = Path(f"/home/alice/output-test-{secrets.token_hex(4)}")
    subprocess.run(["runuser", "-u", "alice", "--", "mkdir", str(path)], check=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def submit(alice: httpx.Client, job_dir: Path, script: str, **jobconf: object) -> str:
    answer = alice.post(
        "/job/ln3/",
        data={
            "jobscript": script,
            "jobfilepath": str(job_dir / "job.sh"),
            "jobconf": json.dumps(jobconf),
        },
    )
    jobid: str = ok_output(answer)["jobid"]
    return jobid


def events(response: httpx.Response) -> Iterator[tuple[str, str, dict[str, object]]]:
    """(id, event, data) of each Server-Sent Event, as they arrive."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                yield (
                    fields.get("id", ""),
                    fields.get("event", "message"),
                    json.loads(fields["data"]),
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def ended(alice: httpx.Client, jobid: str) -> bool:
    return bool(ok_output(alice.get(f"/job/ln3/{jobid}/output"))["eof"])


def test_following_a_running_job_to_its_end(alice: httpx.Client, job_dir: Path) -> None:
    script = (
        '#!/bin/bash\nfor i in 1 2 3 4; do echo "line $i ünïcode"; sleep 0.5; done\necho oops >&2\n'
    )
    jobid = submit(alice, job_dir, script, job_name="follow me")
    received = ""
    last_id = ""
    with alice.stream(
        "GET", f"/job/ln3/{jobid}/output", headers={"Accept": "text/event-stream"}, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kinds = []
        for event_id, kind, data in events(response):
            kinds.append(kind)
            last_id = event_id
            if kind == "output":
                assert data["offset"] == len(received.encode())
                received += str(data["data"])
            else:
                assert data == {"offset": len(received.encode()), "size": len(received.encode())}
    assert kinds[-1] == "eof" and kinds.count("eof") == 1 and "output" in kinds
    expected = "".join(f"line {i} ünïcode\n" for i in range(1, 5)) + "oops\n"
    assert received == expected  # stderr goes to stdout unless --error says otherwise
    assert last_id == str(len(expected.encode()))
    # once ended, the JSON read says so and returns everything from an offset
    whole = ok_output(alice.get(f"/job/ln3/{jobid}/output"))
    assert whole["data"] == expected and whole["eof"] is True
    assert whole["path"] == f"{job_dir}/slurm-{jobid}.out"
    rest = ok_output(alice.get(f"/job/ln3/{jobid}/output", params={"offset": 7}))
    assert rest["data"] == expected.encode()[7:].decode() and rest["offset"] == 7
    # reconnecting with Last-Event-ID resumes at that offset: here, the end
    with alice.stream(
        "GET",
        f"/job/ln3/{jobid}/output",
        params={"follow": "true"},
        headers={"Last-Event-ID": last_id},
    ) as again:
        assert [kind for _, kind, _ in events(again)] == ["eof"]


def test_paths_expanded_as_slurm_does_and_stderr_apart(alice: httpx.Client, job_dir: Path) -> None:
    script = (
        "#!/bin/bash\n"
        f"#SBATCH --output={job_dir}/%x-%j-%u-%%.out\n"
        f"#SBATCH --error={job_dir}/err-%A-%5j.txt\n"
        "echo to out; echo to err >&2\n"
    )
    jobid = submit(alice, job_dir, script, job_name="my job")
    wait_for(lambda: ended(alice, jobid), timeout=60, what="the job to end")
    out = ok_output(alice.get(f"/job/ln3/{jobid}/output"))
    assert out["path"] == f"{job_dir}/my job-{jobid}-alice-%.out"
    assert out["data"] == "to out\n"
    err = ok_output(alice.get(f"/job/ln3/{jobid}/output", params={"stream": "stderr"}))
    assert err["path"] == f"{job_dir}/err-{jobid}-{jobid.zfill(5)}.txt"
    assert err["data"] == "to err\n" and Path(err["path"]).exists()


def test_only_the_owner_reads_it_and_unknown_paths_are_404(
    alice: httpx.Client, bob: httpx.Client, job_dir: Path
) -> None:
    jobid = submit(alice, job_dir, "#!/bin/bash\necho secret\n")
    assert "another user" in error_of(bob.get(f"/job/ln3/{jobid}/output"), 403)
    followed = bob.get(f"/job/ln3/{jobid}/output", params={"follow": "true"})
    assert "another user" in error_of(followed, 403)
    unknown = alice.get("/job/ln3/999999999/output")
    assert "output path of job 999999999 on ln3 is unknown" in error_of(unknown, 404)
    assert "stdout or stderr" in error_of(
        alice.get(f"/job/ln3/{jobid}/output", params={"stream": "both"}), 400
    )
    assert error_of(alice.get("/job/ln3/abc/output"), 400)
