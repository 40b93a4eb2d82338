"""GET /metrics on real gateways: series, labels, values that move, and who may read them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    Server,
    gateway_config,
    ok_output,
    start_server,
    stop_server,
    wait_for,
)
from tests.login_nodes import LoginNodes
from tests.slurm_helpers import cancel, held_job, submit

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server, **kwargs: Any) -> Series:
    """Every sample of the gateway's exposition, by name and labels."""
    answer = httpx.get(f"{server.url}/metrics", timeout=30, **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def parse(text: str) -> Series:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def named(series: Series, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in series.items() if n == name}


def test_a_request_is_counted_under_its_route_template(local_server: Server) -> None:
    before = scrape(local_server)
    with closing(local_server.login("alice")) as alice:
        assert alice.get("/job/ln3/99999999").status_code == 404  # no such job
        ok_output(alice.get("/job"))
    after = scrape(local_server)

    template = {"route": "/api/job/{name}/{jobid}", "method": "GET", "status": "404"}
    assert value(after, "hpcgate_http_requests_total", **template) == (
        value(before, "hpcgate_http_requests_total", **template) + 1
    )
    status = {"route": "/api/job", "method": "GET", "status": "200"}
    assert value(after, "hpcgate_http_requests_total", **status) >= (
        value(before, "hpcgate_http_requests_total", **status) + 1
    )
    timed = {"route": "/api/job/{name}/{jobid}", "method": "GET"}
    assert value(after, "hpcgate_http_request_duration_seconds_count", **timed) == (
        value(before, "hpcgate_http_request_duration_seconds_count", **timed) + 1
    )
    routes = {dict(labels)["route"] for labels in named(after, "hpcgate_http_requests_total")}
    assert not any("99999999" in route or "ln3" in route for route in routes), routes


def test_a_path_no_route_knows_is_counted_as_unmatched(local_server: Server) -> None:
    before = scrape(local_server)
    assert httpx.get(f"{local_server.url}/no/such/path/4711").status_code == 404
    after = scrape(local_server)
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(after, "hpcgate_http_requests_total", **unmatched) == (
        value(before, "hpcgate_http_requests_total", **unmatched) + 1
    )


def test_logins_are_counted_by_outcome(local_server: Server) -> None:
    before = scrape(local_server)
    refused = httpx.post(
        f"{local_server.url}/api/auth",
        data={"username": "no-such-user-metrics", "password": "wrong"},
    )
    assert refused.status_code == 401
    local_server.login("bob").close()
    after = scrape(local_server)
    for outcome in ("failure", "success"):
        assert value(after, "hpcgate_logins_total", outcome=outcome) == (
            value(before, "hpcgate_logins_total", outcome=outcome) + 1
        ), outcome


def test_a_submit_counts_its_scheduler_call_under_the_configured_name(
    local_server: Server,
) -> None:
    before = scrape(local_server)
    with closing(local_server.login("alice")) as alice:
        jobid = ok_output(
            alice.post(
                "/job/renamed/",
                data={"jobscript": "#!/bin/bash\nsleep 30\n", "jobconf": '{"time_limit": 1}'},
            )
        )["jobid"]
        try:
            after = scrape(local_server)
        finally:
            alice.delete(f"/job/renamed/{jobid}")
    call = {"machine": "renamed", "command": "yhbatch", "outcome": "ok"}
    assert value(after, "hpcgate_scheduler_calls_total", **call) == (
        value(before, "hpcgate_scheduler_calls_total", **call) + 1
    )
    timed = {"machine": "renamed", "command": "yhbatch"}
    assert value(after, "hpcgate_scheduler_call_duration_seconds_count", **timed) == (
        value(before, "hpcgate_scheduler_call_duration_seconds_count", **timed) + 1
    )
    # the script is written, then yhbatch runs: each a process started as alice
    assert value(after, "hpcgate_processes_spawned_total") >= (
        value(before, "hpcgate_processes_spawned_total") + 2
    )


def test_cluster_series_are_the_snapshots_counts(local_server: Server) -> None:
    """Jobs and nodes by machine, partition and state equal GET /api/job's figures."""
    with closing(local_server.login("alice")) as alice:
        jobid = ok_output(
            alice.post(
                "/job/ln3/",
                data={"jobscript": "#!/bin/bash\nsleep 60\n", "jobconf": '{"time_limit": 2}'},
            )
        )["jobid"]
        try:

            def consistent() -> tuple[dict[str, Any], Series] | None:
                first = ok_output(alice.get("/job"))["ln3"]
                series = scrape(local_server)
                second = ok_output(alice.get("/job"))["ln3"]
                if not first["updated"] or first["updated"] != second["updated"]:
                    return None  # a probe landed in between: read again
                queued = sum(v for k, v in first["queue"].items() if k not in ("time", "health"))
                return (first, series) if queued >= 1 else None

            status, series = wait_for(consistent, timeout=60, what="a snapshot with our job")
        finally:
            alice.delete(f"/job/ln3/{jobid}")

    queue = {k: v for k, v in status["queue"].items() if k not in ("time", "health")}
    jobs = named(series, "slurm_jobs")
    ln3_jobs = {labels: v for labels, v in jobs.items() if ("machine", "ln3") in labels}
    assert sum(ln3_jobs.values()) == sum(queue.values())
    assert {dict(labels)["partition"] for labels in ln3_jobs} <= {"work", "debug"}
    states = {dict(labels)["state"] for labels in ln3_jobs}
    assert states <= {"pending", "running", "completing", "configuring", "suspended"}, states
    legacy = value(series, "slurm_queue_pending", machine="ln3") + value(
        series, "slurm_queue_running", machine="ln3"
    )
    assert legacy == queue.get("PD", 0) + queue.get("R", 0)

    nodes = {
        (dict(labels)["partition"], dict(labels)["state"]): v
        for labels, v in named(series, "slurm_nodes").items()
        if ("machine", "ln3") in labels
    }
    expected = {
        (partition, state): count
        for partition, counts in status["info"].items()
        for state, count in counts.items()
    }
    assert nodes == expected
    idle = sum(count for (partition, state), count in expected.items() if state == "idle")
    assert (
        sum(
            v
            for labels, v in named(series, "slurm_nodes_idle").items()
            if ("machine", "ln3") in labels
        )
        == idle
    )

    assert value(series, "hpcgate_probe_health", machine="ln3") == status["queue"]["health"]
    assert value(series, "hpcgate_probe_success", machine="ln3") == 1
    assert value(series, "hpcgate_probe_duration_seconds", machine="ln3") == status["queue"]["time"]
    assert 0 <= value(series, "hpcgate_snapshot_age_seconds", machine="ln3") < 60
    assert value(series, "hpcgate_snapshot_stale", machine="ln3") == 0
    assert value(series, "hpcgate_store_up") == 1


def test_jobs_waiting_on_a_dependency_are_the_clusters(local_server: Server) -> None:
    """The dependency gauge counts pending jobs whose reason is a dependency, as squeue."""
    first = held_job("alice", "dependency-head")
    waiting = [submit("alice", f"--dependency=afterok:{first}", "--wrap=true") for _ in range(2)]
    try:

        def agreed() -> float | None:
            reasons = subprocess.run(
                ["squeue", "--noheader", "--states=PD", "--format=%r"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            expected = reasons.count("Dependency")
            gauge = value(scrape(local_server), "slurm_queue_pending_dependency", machine="ln3")
            return gauge if expected >= 2 and gauge == expected else None

        assert wait_for(agreed, timeout=60, what="the dependency gauge to match squeue") >= 2
    finally:
        cancel(*waiting, first)


def test_the_exposition_passes_promtool(local_server: Server) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    text = httpx.get(f"{local_server.url}/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def guarded(cluster: None, public_dir: Path, tmp_path: Path) -> Iterator[Server]:
    """A gateway whose /metrics needs a token."""
    config = gateway_config(public_dir, "local", None) + '\n[metrics]\ntoken = "s3cret-scrape"\n'
    running = start_server(config, tmp_path)
    yield running
    stop_server(running)


def test_a_token_guards_metrics_when_set(guarded: Server) -> None:
    url = f"{guarded.url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = httpx.get(url, headers={"Authorization": "Bearer s3cret-scrape"})
    assert answer.status_code == 200 and "hpcgate_http_requests_total" in answer.text


def test_addresses_outside_the_allowed_networks_are_refused(
    cluster: None, public_dir: Path, tmp_path: Path
) -> None:
    config = gateway_config(public_dir, "local", None) + '\n[metrics]\nallow = ["10.0.0.0/8"]\n'
    running = start_server(config, tmp_path)
    try:
        refused = httpx.get(f"{running.url}/metrics")
        assert refused.status_code == 403 and "127.0.0.1" in refused.text
        assert httpx.get(f"{running.url}/healthz").status_code == 200  # health stays open
    finally:
        stop_server(running)


def test_request_ids_are_echoed_and_logged(cluster: None, public_dir: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    config = f'[server]\nlog_format = "json"\n[audit]\nfile = "{audit}"\n' + gateway_config(
        public_dir, "local", None
    )
    running = start_server(config, tmp_path)
    try:
        chosen = "req-4f2a.9:xyz"
        answer = httpx.get(f"{running.url}/api/job", headers={"X-Request-ID": chosen})
        assert answer.headers["x-request-id"] == chosen
        invented = httpx.get(f"{running.url}/api/job", headers={"X-Request-ID": "bad id\t<x>"})
        assert re.fullmatch(r"[0-9a-f]{32}", invented.headers["x-request-id"])
        fresh = httpx.get(f"{running.url}/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", fresh) and fresh != invented.headers["x-request-id"]

        entries = [json.loads(line) for line in audit.read_text().splitlines()]
        assert [e["request_id"] for e in entries if e["route"] == "/api/job"][-2:] == [
            chosen,
            invented.headers["x-request-id"],
        ]

        def logged() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in running.log().splitlines() if line[:1] == "{"]
            return [line for line in lines if line.get("request_id") == chosen]

        mine = wait_for(logged, timeout=10, what="a log line with the request id")
        assert any("GET /api/job" in line["message"] for line in mine), mine
    finally:
        stop_server(running)


def test_a_read_the_route_answers_is_audited_once_under_one_request_id(
    cluster: None, public_dir: Path, tmp_path: Path
) -> None:
    """A read the cached reads hand on to the route (here: not logged in) keeps the id they
    chose: the answer and the audit line name the same one."""
    audit = tmp_path / "audit.jsonl"
    config = f'[audit]\nfile = "{audit}"\n' + gateway_config(public_dir, "local", None)
    running = start_server(config, tmp_path)
    try:
        answer = httpx.get(f"{running.url}/api/job/ln3")
        assert answer.status_code == 401
        entries = [json.loads(line) for line in audit.read_text().splitlines()]
        assert [e["request_id"] for e in entries if e["route"] == "/api/job/ln3"] == [
            answer.headers["x-request-id"]
        ]
    finally:
        stop_server(running)


def test_an_idempotent_replay_is_counted(local_server: Server) -> None:
    before = scrape(local_server)
    with closing(local_server.login("alice")) as alice:
        fields = {"jobscript": "#!/bin/bash\nsleep 30\n", "jobconf": '{"time_limit": 1}'}
        key = {"Idempotency-Key": f"metrics-{time.time_ns()}"}
        first = ok_output(alice.post("/job/ln3/", data=fields, headers=key))["jobid"]
        try:
            assert ok_output(alice.post("/job/ln3/", data=fields, headers=key))["jobid"] == first
        finally:
            alice.delete(f"/job/ln3/{first}")
    after = scrape(local_server)
    assert value(after, "hpcgate_idempotent_replays_total") == (
        value(before, "hpcgate_idempotent_replays_total") + 1
    )


def test_ssh_connections_are_counted_per_login_node(
    cluster: None, public_dir: Path, tmp_path: Path, login_nodes: LoginNodes
) -> None:
    running = start_server(gateway_config(public_dir, "ssh", login_nodes), tmp_path)
    try:
        with closing(running.login("alice")) as alice:
            assert ok_output(alice.post("/command/ln3", data={"command": "true"}))["retcode"] == 0
        series = scrape(running)
        first = f"127.0.0.1:{login_nodes.ports[0]}"
        assert value(series, "hpcgate_ssh_connections_opened_total", host=first) >= 1
        assert value(series, "hpcgate_ssh_connections_open", host=first) >= 1
        # open never exceeds opened: a retired connection leaves the gauge
        for labels, opened in named(series, "hpcgate_ssh_connections_opened_total").items():
            assert named(series, "hpcgate_ssh_connections_open").get(labels, 0) <= opened
    finally:
        stop_server(running)
