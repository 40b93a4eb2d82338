"""What the containment tests look for: processes of alice's that outlived their action."""

from __future__ import annotations

import os
import subprocess
import time

from tests.conftest import wait_for

ESCAPES = {
    "nohup": "nohup {sleep} &",
    "setsid": "setsid -f {sleep}",
    "job-control": "set -m; {sleep} &",
}


def unique_sleep() -> str:
    """A sleep command no other test (or parallel run) starts."""
    return f"sleep {1000 + time.time_ns() % 10**9 / 10**9:.9f}"


def alices(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-u", "alice", "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_nothing_left(pattern: str, descriptors: int) -> None:
    try:
        assert wait_for(lambda: not alices(pattern), timeout=10, what=f"no {pattern!r} left")
    finally:
        subprocess.run(["pkill", "-KILL", "-u", "alice", "-f", pattern])
    assert open_descriptors() == descriptors, "the gateway keeps no descriptor of the action"
