"""The JOB module's routes on the real cluster, as the page's own client uses them."""

from __future__ import annotations

import json
import pwd
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcgate.api.envelope import EncodedAnswers
from hpcgate.api.routes import jobs as routes
from hpcgate.schedulers.base import JobRecord
from tests.conftest import Server, error_of, ok_output, settled, wait_for

QUEUE_COLUMNS = {"status", "nodelist", "name", "partition", "user", "time", "nodes", "id"}
JOB_COLUMNS = {"status", "tasks", "name", "partition", "time", "nodes", "id", "exitcode"}
SLEEPER = "#!/bin/bash\nsleep 300\n"


def submit(client: httpx.Client, machine: str = "ln3", **fields: Any) -> str:
    jobid: str = ok_output(client.post(f"/job/{machine}/", data=fields))["jobid"]
    assert jobid.isdigit()
    return jobid


def queue(client: httpx.Client, machine: str = "ln3") -> dict[str, dict[str, Any]]:
    listing: dict[str, dict[str, Any]] = ok_output(client.get(f"/job/{machine}/"))
    return listing


def detail(client: httpx.Client, jobid: str, machine: str = "ln3") -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = ok_output(client.get(f"/job/{machine}/{jobid}"))
    return rows


def scontrol(jobid: str) -> str:
    """What slurmctld itself says of a job (read as root, for assertions only)."""
    return subprocess.run(
        ["scontrol", "show", "job", "--oneliner", jobid], capture_output=True, text=True, check=True
    ).stdout


def wait_status(client: httpx.Client, jobid: str, *statuses: str) -> dict[str, dict[str, Any]]:
    def reached() -> dict[str, dict[str, Any]] | None:
        rows = detail(client, jobid)
        return rows if rows["status"][jobid] in statuses else None

    return wait_for(reached, timeout=60, what=f"job {jobid} to be {' or '.join(statuses)}")


def wait_step(client: httpx.Client, step: str, status: str) -> dict[str, dict[str, Any]]:
    """The job's rows once ``step`` is listed with ``status``: accounting may record a
    job's end a moment before its steps' (the job's own status comes first)."""
    jobid = step.split(".", 1)[0]

    def reached() -> dict[str, dict[str, Any]] | None:
        rows = detail(client, jobid)
        return rows if rows["status"].get(step) == status else None

    return wait_for(reached, timeout=30, what=f"step {step} to be listed as {status}")


def home(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def test_submit_as_the_page_client_does(alice: httpx.Client) -> None:
    path = home("alice") / "project" / "testjob" / "job.sh"
    script = "#!/bin/bash\necho hello from $(id -un)\n"
    jobid = submit(
        alice,
        jobscript=script,
        jobfilepath=str(path),
        jobconf=json.dumps({"job_name": "hello", "time_limit": 10}),
    )
    assert path.read_text() == script
    assert path.stat().st_uid == pwd.getpwnam("alice").pw_uid
    info = scontrol(jobid)
    assert "JobName=hello " in info and "TimeLimit=00:10:00" in info and "UserId=alice(" in info

    rows = wait_status(alice, jobid, "Completed")
    assert set(rows) >= JOB_COLUMNS
    assert rows["exitcode"][jobid] == "0:0"
    assert rows["name"][jobid] == "hello"
    assert rows["partition"][jobid] == "work"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", rows["time"][jobid])
    rows = wait_step(alice, f"{jobid}.batch", "Completed")
    assert next(iter(rows["id"])) == jobid, "the steps are listed after the job"
    output = wait_for(lambda: (path.parent / f"slurm-{jobid}.out").exists(), what="job output")
    assert output
    assert (path.parent / f"slurm-{jobid}.out").read_text() == "hello from alice\n"


def test_submit_an_existing_jobfile(alice: httpx.Client) -> None:
    path = home("alice") / "existing.sh"
    made = ok_output(
        alice.post("/command/ln3", data={"command": f"printf '#!/bin/sh\\nexit 0\\n' > {path}"})
    )
    assert made["retcode"] == 0
    jobid = submit(alice, jobfile=str(path), jobconf=json.dumps({"job_name": "existing"}))
    assert "JobName=existing " in scontrol(jobid)


def test_submit_without_a_path_writes_under_newt(alice: httpx.Client) -> None:
    jobid = submit(alice, jobscript="#!/bin/bash\ntrue\n")
    command = re.search(r"Command=(\S+)", scontrol(jobid))
    assert command is not None
    script = Path(command.group(1))
    assert script.parent == home("alice") / "newt"
    assert script.read_text() == "#!/bin/bash\ntrue\n"


def test_submit_with_a_json_body_and_a_jobconf_object(alice: httpx.Client) -> None:
    answer = alice.post(
        "/job/ln3",
        json={"jobscript": SLEEPER, "jobconf": {"job_name": "json-body", "partition": "debug"}},
    )
    jobid = ok_output(answer)["jobid"]
    assert "Partition=debug " in scontrol(jobid)
    ok_output(alice.delete(f"/job/ln3/{jobid}"))


def test_every_jobconf_key_reaches_slurm(alice: httpx.Client) -> None:
    workdir = home("alice") / "wdir"
    assert (
        ok_output(alice.post("/command/ln3", data={"command": f"mkdir -p {workdir}"}))["retcode"]
        == 0
    )
    jobid = submit(
        alice,
        jobscript='#!/bin/bash\nprintf "%s|" "$@" > args.txt\n',
        jobconf=json.dumps(
            {
                "job_wdir": str(workdir),
                "job_name": "all keys",
                "time_limit": 7,
                "partition": "debug",
                "scale_cores": 2,
                "scale_memGB": 0.5,
                "scale_Nodes": 2,
                "jobfile_args": "one 'two words' three",
            }
        ),
    )
    info = scontrol(jobid)
    for expected in (
        f"WorkDir={workdir} ",
        "JobName=all keys ",
        "TimeLimit=00:07:00",
        "Partition=debug ",
        "NumTasks=2 ",
        "NumNodes=2",
        "MinMemoryNode=512M",
    ):
        assert expected in info, (expected, info)
    wait_status(alice, jobid, "Completed", "Failed")
    args = workdir / "args.txt"
    assert wait_for(args.exists, what="args.txt")
    assert args.read_text() == "one|two words|three|"


def test_queue_lists_own_jobs_with_the_page_columns(alice: httpx.Client, bob: httpx.Client) -> None:
    mine = submit(alice, jobscript=SLEEPER, jobconf=json.dumps({"job_name": "listed"}))
    theirs = submit(bob, jobscript=SLEEPER)
    listing = queue(alice)
    assert set(listing) == QUEUE_COLUMNS
    assert listing["id"][mine] == mine
    assert listing["name"][mine] == "listed"
    assert listing["user"][mine] == "alice"
    assert listing["partition"][mine] == "work"
    assert listing["status"][mine] in ("Pending", "Running")
    assert isinstance(listing["nodes"][mine], int)
    assert re.fullmatch(r"\d+:\d\d", listing["time"][mine])
    assert theirs not in listing["id"], "another user's job must not be listed"
    assert set(listing["user"].values()) == {"alice"}
    ok_output(alice.delete(f"/job/ln3/{mine}"))
    ok_output(bob.delete(f"/job/ln3/{theirs}"))


def test_detail_is_never_empty_right_after_submit(alice: httpx.Client) -> None:
    jobid = submit(alice, jobscript=SLEEPER, jobconf=json.dumps({"job_name": "young"}))
    rows = detail(alice, jobid)  # accounting does not know it yet: the live queue answers
    assert rows["status"][jobid] in ("Pending", "Running")
    assert rows["name"][jobid] == "young"
    assert rows["partition"][jobid] == "work"
    ok_output(alice.delete(f"/job/ln3/{jobid}"))


def test_detail_of_a_failed_job_has_its_exit_code_and_steps(alice: httpx.Client) -> None:
    jobid = submit(alice, jobscript="#!/bin/bash\nexit 3\n")
    rows = wait_status(alice, jobid, "Failed")
    assert rows["exitcode"][jobid] == "3:0"
    rows = wait_step(alice, f"{jobid}.batch", "Failed")
    assert rows["exitcode"][f"{jobid}.batch"] == "3:0"


def test_kill_a_running_job(alice: httpx.Client) -> None:
    jobid = submit(alice, jobscript=SLEEPER)
    wait_status(alice, jobid, "Running")
    assert ok_output(alice.delete("/job/ln3/", params={"jobid": jobid})) == ""
    rows = wait_status(alice, jobid, "Cancelled")
    assert rows["status"][jobid] == "Cancelled"
    assert wait_for(lambda: jobid not in queue(alice)["id"], what="the killed job to leave")


def test_kill_takes_the_jobid_from_form_json_or_path(alice: httpx.Client) -> None:
    by_form, by_json, by_path = (submit(alice, jobscript=SLEEPER) for _ in range(3))
    ok_output(alice.request("DELETE", "/job/ln3", data={"jobid": by_form}))
    ok_output(alice.request("DELETE", "/job/ln3/", json={"jobid": by_json}))
    ok_output(alice.delete(f"/job/ln3/{by_path}/"))
    for jobid in (by_form, by_json, by_path):
        wait_status(alice, jobid, "Cancelled")


def test_killing_a_finished_job_is_a_conflict(alice: httpx.Client) -> None:
    jobid = submit(alice, jobscript="#!/bin/bash\ntrue\n")
    wait_status(alice, jobid, "Completed")
    assert "already finished" in error_of(alice.delete(f"/job/ln3/{jobid}"), 409)


def test_unknown_job_is_404(alice: httpx.Client) -> None:
    found = settled(lambda: alice.get("/job/ln3/987654321"))
    assert "no job 987654321" in error_of(found, 404)
    error_of(settled(lambda: alice.delete("/job/ln3/987654321")), 404)


def test_bob_can_neither_inspect_nor_kill_alices_job(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    jobid = submit(alice, jobscript=SLEEPER)
    assert "another user" in error_of(bob.get(f"/job/ln3/{jobid}"), 403)
    assert "another user" in error_of(bob.delete("/job/ln3", params={"jobid": jobid}), 403)
    assert "another user" in error_of(bob.delete(f"/job/ln3/{jobid}"), 403)
    assert detail(alice, jobid)["status"][jobid] in ("Pending", "Running")
    ok_output(alice.delete(f"/job/ln3/{jobid}"))


def test_renamed_scheduler_commands(alice: httpx.Client, public_dir: Path) -> None:
    # the job cannot end before the test has seen it listed: it waits for this file
    go = public_dir / f"go-{secrets.token_hex(4)}"
    jobid = submit(
        alice, "renamed", jobscript=f"#!/bin/bash\nuntil [ -e {go} ]; do sleep 0.1; done\n"
    )
    try:
        assert jobid in queue(alice, "renamed")["id"]
    finally:
        go.touch()
    rows = wait_status(alice, jobid, "Completed")
    assert rows["exitcode"][jobid] == "0:0"


def test_hostile_values_stay_values(alice: httpx.Client, public_dir: Path) -> None:
    marker = public_dir / "pwned"
    where = home("alice") / f"hostile-{secrets.token_hex(4)}"  # its own: modules reuse it
    jobid = submit(
        alice,
        jobscript='#!/bin/bash\nprintf "%s\\n" "$@" > hostile.txt\n',
        jobfilepath=str(where / "job.sh"),
        jobconf=json.dumps(
            {
                "job_name": f"--wrap=touch {marker}",
                "jobfile_args": [f"$(touch {marker})", "; touch " + str(marker), "--partition=x"],
            }
        ),
    )
    assert f"JobName=--wrap=touch {marker} " in scontrol(jobid)
    wait_status(alice, jobid, "Completed")
    out = where / "hostile.txt"
    assert wait_for(out.exists, what="hostile.txt")
    assert out.read_text().splitlines() == [
        f"$(touch {marker})",
        f"; touch {marker}",
        "--partition=x",
    ]
    assert not marker.exists(), "a value reached a shell"
    shutil.rmtree(where)


@pytest.mark.parametrize("machine", ["ln3", "tight"])
def test_queue_answers_on_every_machine(alice: httpx.Client, machine: str) -> None:
    assert set(queue(alice, machine)) == QUEUE_COLUMNS


def test_server_log_has_no_tracebacks(server: Server) -> None:
    assert "Traceback" not in server.log()


def timed_queue(client: httpx.Client) -> tuple[dict[str, dict[str, Any]], float, bool]:
    """Alice's listing on ln3, when its data was read (epoch s), and whether it was read
    before the request was sent, i.e. came from a snapshot (a live one is read after)."""
    asked = time.time()
    answer = client.get("/job/ln3/")
    taken = datetime.fromisoformat(answer.headers["X-Data-Taken"]).timestamp()
    return ok_output(answer), taken, taken < asked


def test_a_reused_listing_never_hides_your_own_submit_or_kill(alice: httpx.Client) -> None:
    # once a snapshot serves alice, its encoded listing is kept for reuse
    wait_for(lambda: timed_queue(alice)[2], what="a snapshot to serve alice's listing")
    jobid = submit(alice, jobscript=SLEEPER)
    assert jobid in timed_queue(alice)[0]["id"], "the listing right after the submit"

    def snapshot_lists_it() -> bool:
        listing, _, from_snapshot = timed_queue(alice)
        return from_snapshot and jobid in listing["id"]

    # a snapshot newer than the submit serves her again, showing the job queued or running
    wait_for(snapshot_lists_it, what=f"a snapshot that lists job {jobid} to serve alice")
    before_kill = time.time()
    ok_output(alice.delete(f"/job/ln3/{jobid}"))
    listing, taken, _ = timed_queue(alice)
    assert taken > before_kill, "the listing right after the kill was read before it"
    assert listing["status"].get(jobid) not in ("Pending", "Running"), "the kill is shown"


def test_queue_bodies_are_encoded_once_per_snapshot() -> None:
    job = JobRecord("7", "hello", "alice", "PENDING", "work", "0:00", 1, None, "(Priority)", "0:0")
    answers = EncodedAnswers()
    slot = ("queue", "ln3", "alice")
    first = answers.ok(slot, 100.0, lambda: routes.columns([job], routes.QUEUE_COLUMNS))
    assert json.loads(first)["output"]["status"] == {"7": "Pending"}
    again = answers.ok(slot, 100.0, lambda: routes.columns([job], routes.QUEUE_COLUMNS))
    assert again is first, "the same snapshot: the same bytes"
    newer = replace(job, state="RUNNING")
    assert json.loads(
        answers.ok(slot, 105.0, lambda: routes.columns([newer], routes.QUEUE_COLUMNS))
    )["output"]["status"] == {"7": "Running"}
    other = answers.ok(
        ("queue", "ln3", "bob"), 105.0, lambda: routes.columns([], routes.QUEUE_COLUMNS)
    )
    assert json.loads(other)["output"]["status"] == {}, "each user's listing apart"
