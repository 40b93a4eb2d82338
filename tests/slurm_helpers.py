"""Helpers for the status tests: a gateway built in-process and real held jobs."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hpcgate.accounts import UnixAccount
from hpcgate.config import Config
from hpcgate.gateway import Gateway
from hpcgate.process import Completed, Limits
from hpcgate.runners.local import LocalRunner
from hpcgate.wiring import build_gateway


class CountingRunner(LocalRunner):
    """The real local runner, counting the programs it starts (to measure scheduler load)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        self.calls[argv[0]] += 1
        return await super().run(account, argv, limits=limits, stdin=stdin, cwd=cwd)


def gateway(**sections: Any) -> tuple[Gateway, CountingRunner]:
    """A gateway with machine ln3 whose runner counts; ``sections`` override the config."""
    config = Config.model_validate({"machines": {"ln3": {}}, **sections})
    runner = CountingRunner()
    return build_gateway(config, runners={"ln3": runner}), runner


def submit(user: str, *options: str) -> str:
    """Submit a job as ``user`` straight through sbatch (not the gateway); returns its id."""
    done = subprocess.run(
        ["runuser", "-u", user, "--", "sbatch", "--parsable", *options],
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    )
    return done.stdout.strip().split(";")[0]


def held_job(user: str, name: str = "held") -> str:
    """A held job of ``user``: pending until released or cancelled."""
    return submit(user, "--hold", f"--job-name={name}", "--wrap=true")


def cancel(*jobids: str) -> None:
    subprocess.run(["scancel", *jobids], check=False)


def squeue_count(*args: str) -> int:
    """How many jobs slurmctld itself lists (as root) with ``args``."""
    done = subprocess.run(
        ["squeue", "--noheader", *args], capture_output=True, text=True, check=True
    )
    return len(done.stdout.splitlines())


def sinfo_nodes(partition: str, state: str) -> int:
    done = subprocess.run(
        ["sinfo", "--noheader", f"--partition={partition}", f"--states={state}", "--format=%D"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sum(int(n) for n in done.stdout.split())
