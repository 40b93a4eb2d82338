"""Issue 12: what the gateway runs is bounded in memory (``limits.max_memory_bytes``).

Machine ``tight`` bounds each process of an action to 256 MiB of address space (RLIMIT_AS
locally, ``ulimit -v`` over SSH): a command that allocates past it fails at once with a
clear error instead of growing, and what stays under it runs as usual.
"""

from __future__ import annotations

import httpx

from tests.conftest import ok_output

ALLOCATE = "python3 -c 'b = bytearray({size}); print(\"allocated\")'"


def run(client: httpx.Client, command: str) -> dict[str, object]:
    result: dict[str, object] = ok_output(client.post("/command/tight", data={"command": command}))
    return result


def test_a_command_allocating_past_the_bound_fails_clearly(alice: httpx.Client) -> None:
    past = run(alice, ALLOCATE.format(size=2**30))
    assert past["retcode"] != 0 and "allocated" not in str(past["output"])
    assert "MemoryError" in str(past["error"])


def test_a_command_under_the_bound_runs(alice: httpx.Client) -> None:
    under = run(alice, ALLOCATE.format(size=2**24))
    assert under == {"output": "allocated\n", "error": "", "retcode": 0}


def test_the_bound_is_the_configured_one(alice: httpx.Client) -> None:
    limits = run(alice, "ulimit -v")
    assert limits["output"] == f"{268435456 // 1024}\n"
