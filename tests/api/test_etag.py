"""ETag and If-None-Match on the reads served from snapshots: status and your own queue."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from hpcgate.api.envelope import EncodedAnswers, etag_matches, tagged
from tests.conftest import error_of, ok_output, wait_for

SLEEPER = "#!/bin/bash\nsleep 300\n"
# Every header a 200 of these routes carries besides the body's own, that a 304 keeps.
KEPT_ON_304 = ("etag", "x-request-id", "x-content-type-options", "cache-control")


def snapshot_listing(client: httpx.Client, path: str = "/job/ln3") -> httpx.Response:
    """A listing served from a snapshot (its data read before the request was sent)."""

    def served() -> httpx.Response | None:
        asked = time.time()
        answer = client.get(path)
        ok_output(answer)
        taken = datetime.fromisoformat(answer.headers["X-Data-Taken"]).timestamp()
        return answer if taken < asked else None

    return wait_for(served, what="a snapshot to serve the listing")


def test_status_is_answered_304_while_no_snapshot_changed(anonymous: httpx.Client) -> None:
    def two_alike() -> tuple[httpx.Response, httpx.Response] | None:
        first, second = anonymous.get("/job"), anonymous.get("/job")
        return (first, second) if first.content == second.content else None

    first, second = wait_for(two_alike, what="two status reads between snapshots")
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and second.headers["etag"] == etag

    def not_modified() -> httpx.Response | None:
        # read again each time: a probe (every 2 s here) may bring a new tag in between
        nonlocal etag
        etag = anonymous.get("/job").headers["etag"]
        answer = anonymous.get("/job/", headers={"If-None-Match": etag})
        return answer if answer.status_code == 304 else None

    answer = wait_for(not_modified, what="a 304 for the status just read")
    assert answer.content == b"" and answer.headers["etag"] == etag
    for name in KEPT_ON_304:
        assert name in answer.headers, name
    # a tag among others, or weak, still matches; another one does not
    assert_not_modified_or_changed(anonymous, "/job", f'"nope", W/{etag}', etag)
    changed = anonymous.get("/job", headers={"If-None-Match": '"nope"'})
    assert ok_output(changed) and changed.headers["etag"]


def assert_not_modified_or_changed(
    client: httpx.Client, path: str, if_none_match: str | list[str], etag: str
) -> None:
    """``if_none_match``: one header's value, or several headers' in order."""
    values = [if_none_match] if isinstance(if_none_match, str) else if_none_match
    answer = client.get(path, headers=[("If-None-Match", value) for value in values])
    if answer.status_code == 200:  # a new snapshot came in between: a new tag with it
        assert answer.headers["etag"] != etag
        ok_output(answer)
    else:
        assert answer.status_code == 304 and answer.content == b""


def test_only_the_first_if_none_match_counts(anonymous: httpx.Client) -> None:
    """As Starlette reads headers for the routes: the first of several."""
    etag = anonymous.get("/job").headers["etag"]
    answer = anonymous.get("/job", headers=[("If-None-Match", '"nope"'), ("If-None-Match", etag)])
    assert answer.status_code == 200, "the first tag names nothing held"
    assert_not_modified_or_changed(anonymous, "/job", [etag, '"nope"'], etag)


def test_status_gets_a_new_etag_with_a_new_snapshot(anonymous: httpx.Client) -> None:
    first = anonymous.get("/job")
    updated = {name: entry["updated"] for name, entry in ok_output(first).items()}

    def newer() -> httpx.Response | None:
        answer = anonymous.get("/job", headers={"If-None-Match": first.headers["etag"]})
        if answer.status_code == 304:
            return None
        now = ok_output(answer)
        return answer if any(now[name]["updated"] != updated[name] for name in updated) else None

    answer = wait_for(newer, what="a newer snapshot")
    assert answer.headers["etag"] != first.headers["etag"]


def test_own_queue_is_answered_304_with_its_freshness_headers(alice: httpx.Client) -> None:
    first = snapshot_listing(alice)

    def not_modified() -> httpx.Response | None:
        # read again each time: a probe (every 2 s here) may bring a new tag in between
        nonlocal first
        first = snapshot_listing(alice)
        answer = alice.get("/job/ln3/", headers={"If-None-Match": first.headers["etag"]})
        return answer if answer.status_code == 304 else None

    answer = wait_for(not_modified, what="a 304 for the listing just read")
    assert answer.content == b""
    assert answer.headers["X-Data-Taken"] == first.headers["X-Data-Taken"]
    assert int(answer.headers["Age"]) >= 0
    for name in KEPT_ON_304:
        assert name in answer.headers, name


def test_queue_etags_differ_per_user(alice: httpx.Client, bob: httpx.Client) -> None:
    alices, bobs = snapshot_listing(alice), snapshot_listing(bob)
    assert alices.headers["etag"] != bobs.headers["etag"]
    # bob holding alice's tag is not told his listing is hers
    answer = bob.get("/job/ln3", headers={"If-None-Match": alices.headers["etag"]})
    assert ok_output(answer) is not None and answer.headers["etag"] != alices.headers["etag"]


def test_a_held_etag_never_hides_your_own_submit(alice: httpx.Client) -> None:
    held = snapshot_listing(alice)
    submitted = alice.post("/job/ln3", data={"jobscript": SLEEPER})
    jobid = ok_output(submitted)["jobid"]
    try:
        answer = alice.get("/job/ln3", headers={"If-None-Match": held.headers["etag"]})
        assert jobid in ok_output(answer)["id"], "the listing right after the submit"
        assert answer.headers["etag"] != held.headers["etag"]
    finally:
        alice.delete(f"/job/ln3/{jobid}")


def test_errors_carry_no_etag(anonymous: httpx.Client, alice: httpx.Client) -> None:
    not_logged_in = anonymous.get("/job/ln3", headers={"If-None-Match": "*"})
    assert error_of(not_logged_in, 401) and "etag" not in not_logged_in.headers
    unknown = alice.get("/job/nosuch", headers={"If-None-Match": "*"})
    assert error_of(unknown, 404) and "etag" not in unknown.headers


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x","abc"', True),
        ("*", True),
        ('"abcd"', False),
        ("abc", False),
    ],
)
def test_if_none_match_comparison(header: str | None, matches: bool) -> None:
    assert etag_matches(header, b'"abc"') is matches


def test_etags_name_the_slot_and_the_bytes() -> None:
    body = b'{"status":"OK"}'
    assert (
        tagged(("queue", "ln3", "alice"), body).etag != tagged(("queue", "ln3", "bob"), body).etag
    )
    assert tagged("status", body).etag != tagged("status", body + b" ").etag
    answers = EncodedAnswers()
    first = answers.encoded("status", 1.0, lambda: {"a": 1})
    assert answers.encoded("status", 1.0, lambda: {"a": 2}) is first, "kept for its version"
    assert answers.encoded("status", 2.0, lambda: {"a": 2}).etag != first.etag
