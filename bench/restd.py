"""slurmrestd on the benchmark cluster: start it, get a JWT, fill the queue through it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

from bench.common import REPO, RawConnection

ADDRESS = ("127.0.0.1", 6820)
API = "/slurm/v0.0.38"
HELD_NAME = "bench-held"
"""The name of the benchmarks' held jobs: only those are cancelled afterwards (the
cluster is shared with other people's tests, whose jobs the benchmarks leave alone)."""


def start() -> None:
    """slurmrestd with JWT on 127.0.0.1:6820 (``scripts/cluster restd``; idempotent)."""
    subprocess.run([str(REPO / "scripts" / "cluster"), "restd"], check=True)


def headers(user: str) -> dict[str, str]:
    """The headers that authenticate ``user`` to slurmrestd (a two-hour JWT)."""
    out = subprocess.run(
        ["scontrol", "token", f"username={user}", "lifespan=7200"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": out.strip().split("=", 1)[1]}


def job_body(*, hold: bool = False, name: str = "", begin_in: int = 0) -> bytes:
    """A submission of a job that runs ``true`` in /tmp: held, named, or due to begin
    ``begin_in`` seconds from now."""
    job: dict[str, object] = {
        "environment": {"PATH": "/bin"},
        "current_working_directory": "/tmp",
        "standard_output": "/dev/null",
    }
    if hold:
        job["hold"] = True
    if name:
        job["name"] = name
    if begin_in:
        job["begin_time"] = f"now+{begin_in}"  # slurmrestd 22.05 parses only strings here
    return json.dumps({"script": "#!/bin/bash\ntrue\n", "job": job}).encode()


def fill_queue(counts: dict[str, int], connections: int = 16) -> None:
    """Queue ``counts[user]`` held jobs for each user, through slurmrestd (the fastest way
    in: several hundred jobs a second, where sbatch in a loop manages a few dozen)."""

    async def fill(user: str, count: int) -> None:
        body = job_body(hold=True, name=HELD_NAME)
        auth = headers(user)
        left = count

        async def worker() -> None:
            nonlocal left
            connection = RawConnection(*ADDRESS, auth)
            refusals = 0
            while left > 0:
                left -= 1
                try:
                    status, answer = await connection.request(
                        "POST", f"{API}/job/submit", body, "application/json"
                    )
                except (OSError, asyncio.IncompleteReadError) as exc:
                    status, answer = 0, repr(exc).encode()  # closed on us: reconnect
                if status != 200:
                    # e.g. MaxJobCount reached while slurmctld still holds the jobs that
                    # earlier runs cancelled (it forgets them after MinJobAge), which
                    # slurmrestd may answer by closing the connection
                    refusals += 1
                    if refusals > 60:
                        raise RuntimeError(f"slurmrestd refuses submits: {answer[:300]!r}")
                    left += 1
                    await asyncio.sleep(5)
            await connection.close()

        await asyncio.gather(*(worker() for _ in range(min(connections, count))))

    async def fill_all() -> None:
        for user, count in counts.items():
            if count:
                await fill(user, count)

    asyncio.run(fill_all())


def cancel_all(*users: str) -> None:
    """Cancel the benchmarks' held jobs of ``users`` (and no other job of theirs)."""
    for user in users:
        subprocess.run(["scancel", f"--user={user}", f"--name={HELD_NAME}"], check=False)


def held_counts() -> dict[str, int]:
    """How many of the benchmarks' held jobs each user has queued now."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--states=PENDING", f"--name={HELD_NAME}", "--format=%u"],
        capture_output=True,
        text=True,
        check=False,
    )
    counts: dict[str, int] = {}
    for user in listed.stdout.split():
        counts[user] = counts.get(user, 0) + 1
    return counts


BENCH_NAMES = (HELD_NAME, "bench-submit", "bench-events")
"""The names of every job the benchmarks make."""


def forget_in_accounting() -> None:
    """Delete the benchmarks' ended jobs from slurmdbd's database (MariaDB, as root).

    A scale run leaves up to 100,000 of them, and every accounting query of the shared
    test cluster slows down with them (the test suite's too: seen at 245,000 rows,
    MariaDB at 150% CPU). Only ended jobs with the benchmarks' own names are deleted.
    """
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"^ClusterName\s*=\s*([a-z0-9_]+)\s*$", config, re.M)
    if found is None:
        return
    names = ", ".join(f"'{name}'" for name in BENCH_NAMES)  # constants, not input
    table = f"slurm_acct_db.{found.group(1)}_job_table"
    subprocess.run(
        ["mysql", "-e", f"DELETE FROM {table} WHERE job_name IN ({names}) AND state >= 3"],
        check=False,
    )
