"""'Never a double job' across a gateway's kill -9, a lost store and an unreachable controller.

Real gateway processes on the real cluster: a burst of keyed submits to the ``slower``
machine (its sbatch sleeps 8 s) is cut by ``kill -9`` while every submit is inside sbatch;
the gateway restarts and the same requests are sent again. Slurm is then asked, as root,
for the jobs of the burst and the tag each carries. The replays find records "pending in
a process that is gone": the local runner has ended what that process left (its actions'
cgroups), so they learn within seconds, not after the attempt limit, that the first
attempts are over.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import (
    REDIS_URL,
    error_of,
    gateway_config,
    ok_output,
    start_server,
    stop_server,
    wait_for,
)

BURST = 20
LIMITS = """
[limits]
scheduler_timeout = 12
"""
ATTEMPT_LIMIT = 10 + 2 * 12  # wiring.submit_attempt_limit of this config
SCRIPT = "#!/bin/bash\nsleep 60\n"
NO_CONTROLLER = (
    "sbatch: error: Batch job submission failed: "
    "Unable to contact slurm controller (connect failure)"
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where this test's gateways keep their config (and the SQLite file beside it)."""
    return tmp_path


def config_with(public_dir: Path, store: str) -> str:
    """The suite's gateway config with ``store`` as its [store] section, plus a machine
    whose sbatch cannot reach the controller while a flag file exists."""
    config = gateway_config(public_dir, "local", None)  # also makes public_dir/bin
    suite_limits = "\n[limits]\nscheduler_timeout = 30\n"
    assert suite_limits in config
    config = config.replace(suite_limits, LIMITS)
    flag = public_dir / "controller-unreachable"
    script = public_dir / "bin" / "nocontroller-sbatch"
    script.write_text(
        f'#!/bin/sh\nif [ -e "{flag}" ]; then echo "{NO_CONTROLLER}" >&2; exit 1; fi\n'
        'exec sbatch "$@"\n'
    )
    script.chmod(0o755)
    # slow enough that a whole burst is inside it at once, however loaded the machine
    slower = public_dir / "bin" / "slowerbatch"
    slower.write_text('#!/bin/sh\nsleep 8\nexec sbatch "$@"\n')
    slower.chmod(0o755)
    return f"""{config}
[machines.slower]
description = "sbatch takes eight seconds"
runner = "local"
path = "{public_dir / "bin"}:/usr/local/bin:/usr/bin:/bin"
commands = {{ sbatch = "{slower.name}" }}

[machines.nocontroller]
description = "sbatch cannot contact the controller while {flag} exists"
runner = "local"
path = "{public_dir / "bin"}:/usr/local/bin:/usr/bin:/bin"
commands = {{ sbatch = "{script.name}" }}

[store]
{store}
"""


def jobs_named(name: str) -> dict[str, str]:
    """Every job called ``name`` still known to the controller: id -> comment (as root)."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--Format=JobID:|,Comment:|"],
        capture_output=True,
        text=True,
        check=True,
    )
    jobs = {}
    for line in listed.stdout.splitlines():
        jobid, comment, _ = line.split("|")
        jobs[jobid.strip()] = comment.strip()
    return jobs


def submits_in_sbatch(name: str) -> int:
    """How many submit processes (slowerbatch, then sbatch) of jobs ``name`` are running."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"--job-name={name}".encode() in cmdline.read_bytes().split(b"\0"):
                count += 1
        except OSError:
            continue
    return count


def send_all(
    clients: list[httpx.Client], name: str, keys: list[str]
) -> list[httpx.Response | Exception]:
    """The same keyed submit of job ``name`` under each key, all at once."""
    answers: list[httpx.Response | Exception] = [RuntimeError("not sent")] * len(keys)

    def send(index: int) -> None:
        try:
            answers[index] = clients[index].post(
                "/job/slower",
                data={"jobscript": SCRIPT, "jobconf": f'{{"job_name": "{name}"}}'},
                headers={"Idempotency-Key": keys[index]},
            )
        except httpx.TransportError as exc:
            answers[index] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(keys))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Job names whose jobs are cancelled after the test."""
    names: list[str] = []
    yield names
    for name in names:
        ids = list(jobs_named(name))
        if ids:
            subprocess.run(["scancel", *ids], check=False)


STORES = {
    "sqlite": ('backend = "memory"', None),
    "sqlite-file-lost": ('backend = "memory"', "delete the SQLite file"),
    "redis": ('backend = "redis"\nprefix = "{prefix}"', None),
    "redis-emptied": ('backend = "redis"\nprefix = "{prefix}"', "empty the prefix"),
}


# Serial: the restarted gateway must be the one that finds the dead one's actions (their
# cgroups, under a parent every gateway of this host shares) to take over at once; a
# gateway of another test starting meanwhile ends them first, and this one then safely
# waits out the attempt limit instead.
@pytest.mark.serial
@pytest.mark.parametrize("store", list(STORES))
def test_a_replay_after_kill_9_returns_the_first_jobs(
    store: str,
    cluster: None,
    public_dir: Path,
    workdir: Path,
    prefix: str,
    cleanup: list[str],
) -> None:
    section, loss = STORES[store]
    config = config_with(public_dir, section.format(prefix=prefix))
    name = f"kill9-{uuid.uuid4().hex[:8]}"
    cleanup.append(name)
    keys = [str(uuid.uuid4()) for _ in range(BURST)]

    first = start_server(config, workdir)
    with ExitStack() as stack:
        clients = [stack.enter_context(closing(first.login("alice"))) for _ in keys]
        burst = threading.Thread(target=send_all, args=(clients, name, keys))
        burst.start()
        wait_for(
            lambda: submits_in_sbatch(name) == BURST, timeout=30, what="every submit in sbatch"
        )
        first.process.kill()  # kill -9, mid-submit
        first.process.wait()
        burst.join()

    if loss == "delete the SQLite file":
        for file in workdir.glob("hpcgate-state.sqlite*"):
            file.unlink()
    elif loss == "empty the prefix":
        emptied = redis.Redis.from_url(REDIS_URL)
        stale = list(emptied.scan_iter(f"{prefix}*"))
        assert stale, "the first gateway kept its records in Redis"
        emptied.delete(*stale)

    second = start_server(config, workdir)
    try:
        with ExitStack() as stack:
            clients = [stack.enter_context(closing(second.login("alice"))) for _ in keys]
            replaying = time.monotonic()
            replies = send_all(clients, name, keys)
            replayed_in = time.monotonic() - replaying
    finally:
        stop_server(second)
    # the dead gateway's attempts ran here and its leftovers were ended at the restart:
    # the replays never wait out the attempt limit
    assert replayed_in < ATTEMPT_LIMIT, f"replays took {replayed_in:.0f} s"

    replayed = []
    for reply in replies:
        assert isinstance(reply, httpx.Response), reply
        replayed.append(ok_output(reply)["jobid"])
    jobs = jobs_named(name)
    assert len(jobs) == BURST, f"one job per key, not {len(jobs)} for {BURST} keys"
    assert sorted(replayed) == sorted(jobs), "every replay got the job its first attempt made"
    tags = set(jobs.values())
    assert len(tags) == BURST and all(tag.startswith("hpcgate:") for tag in tags)


def test_an_unreachable_controller_frees_the_key(
    cluster: None, public_dir: Path, workdir: Path, cleanup: list[str]
) -> None:
    server = start_server(config_with(public_dir, 'backend = "memory"'), workdir)
    flag = public_dir / "controller-unreachable"
    name, key = f"noctld-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    cleanup.append(name)
    request = {"jobscript": SCRIPT, "jobconf": f'{{"job_name": "{name}"}}'}
    try:
        with closing(server.login("alice")) as alice:
            flag.touch()
            try:
                failed = alice.post(
                    "/job/nocontroller", data=request, headers={"Idempotency-Key": key}
                )
            finally:
                flag.unlink()
            assert "Unable to contact slurm controller" in error_of(failed, 503)
            retried = ok_output(
                alice.post("/job/nocontroller", data=request, headers={"Idempotency-Key": key})
            )
            again = ok_output(
                alice.post("/job/nocontroller", data=request, headers={"Idempotency-Key": key})
            )
    finally:
        stop_server(server)
    assert retried == again
    assert list(jobs_named(name)) == [retried["jobid"]]
