"""GET /api/job on the test gateway (embedded monitors, in-process store)."""

from __future__ import annotations

import time
from datetime import datetime

import httpx

from tests.conftest import Server, ok_output, wait_for


def fresh_status(client: httpx.Client) -> dict[str, dict[str, object]]:
    def reported() -> dict[str, dict[str, object]] | None:
        status: dict[str, dict[str, object]] = ok_output(client.get("/job"))
        return status if all(entry["updated"] for entry in status.values()) else None

    return wait_for(reported, timeout=30, what="every machine to be reported")


def test_status_is_public_and_has_the_spec_shape(server: Server, anonymous: httpx.Client) -> None:
    status = fresh_status(anonymous)
    assert set(status) == {"ln3", "tight", "renamed", "slow"}
    ln3 = status["ln3"]
    assert ln3["stale"] is False
    queue, info = ln3["queue"], ln3["info"]
    assert isinstance(queue, dict) and isinstance(info, dict)
    scheduler_timeout = server.config().limits.scheduler_timeout  # each probe call's bound
    assert 0 <= queue["health"] <= 1 and 0 < queue["time"] < scheduler_timeout
    assert set(info) == {"work", "debug"}
    assert sum(info["work"].values()) == 4 and sum(info["debug"].values()) == 2
    updated = datetime.fromisoformat(str(ln3["updated"]).replace("Z", "+00:00"))
    assert abs(updated.timestamp() - time.time()) < 60


def test_status_trailing_slash(anonymous: httpx.Client) -> None:
    assert "ln3" in ok_output(anonymous.get("/job/"))


def test_a_listing_says_how_old_its_data_is(alice: httpx.Client) -> None:
    answer = alice.get("/job/ln3")
    ok_output(answer)
    assert int(answer.headers["Age"]) >= 0
    taken = datetime.fromisoformat(answer.headers["X-Data-Taken"].replace("Z", "+00:00"))
    assert abs(taken.timestamp() - time.time()) < 60
