"""Prometheus metrics: the gateway's own figures, and the clusters' from the snapshots.

The gateway's series (requests, scheduler calls, processes, SSH connections, logins...)
are counted where things happen, in this process. The clusters' series (jobs, nodes,
probes) are computed at scrape time from the monitors' latest snapshots in the store: a
scrape never calls a scheduler, however often Prometheus comes.

With several gateway processes (``hpcgate serve --workers N``) the processes share a
directory of memory-mapped files (prometheus-client's multiprocess mode, switched on by
``PROMETHEUS_MULTIPROC_DIR``) and whichever process answers a scrape sums them all: one
target per gateway, its figures the total of its processes. Names follow the most used
Slurm exporters where the meaning is the same; README.md, "Metrics", has the mapping.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

import hpcgate
from hpcgate.errors import GatewayError, NotWritten, TimedOut
from hpcgate.process import Completed

if TYPE_CHECKING:  # runners count here too: no import of the layers above them
    from hpcgate.stores.snapshot import Snapshot

T = TypeVar("T")
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Requests take milliseconds (snapshot reads) to minutes (commands up to limits.timeout).
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REGISTRY = CollectorRegistry(auto_describe=True)
"""The gateway's own series in this process (the clusters' are added at scrape time)."""

REQUESTS = Counter(
    "hpcgate_http_requests",
    "HTTP requests answered, by route template (never the raw path), method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "hpcgate_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template and method",
    ["route", "method"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
SCHEDULER_CALLS = Counter(
    "hpcgate_scheduler_calls",
    "Scheduler commands run, by machine, command (as configured, e.g. sbatch or yhbatch) "
    "and outcome: ok, failed (non-zero exit), timeout, unavailable (could not run), "
    "cancelled",
    ["machine", "command", "outcome"],
    registry=REGISTRY,
)
SCHEDULER_SECONDS = Histogram(
    "hpcgate_scheduler_call_duration_seconds",
    "Time a scheduler command took, by machine and command",
    ["machine", "command"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
JOB_EVENTS = Counter(
    "hpcgate_job_events", "Job events appended to the store, by kind", ["kind"], registry=REGISTRY
)
WEBHOOK_DELIVERIES = Counter(
    "hpcgate_webhook_deliveries",
    "Webhook delivery attempts, by outcome (delivered, retrying, failed, abandoned, skipped)",
    ["outcome"],
    registry=REGISTRY,
)
PROCESSES_SPAWNED = Counter(
    "hpcgate_processes_spawned",
    "Processes the local runner started as a user",
    registry=REGISTRY,
)
STAND_IN_CALLS = Counter(
    "hpcgate_stand_in_calls",
    "Programs a user's helper answered without starting them (sbatch through libslurm)",
    registry=REGISTRY,
)
SSH_CONNECTIONS_OPEN = Gauge(
    "hpcgate_ssh_connections_open",
    "SSH connections in the pool, by login node",
    ["host"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
SSH_CONNECTIONS_OPENED = Counter(
    "hpcgate_ssh_connections_opened",
    "SSH connections opened, by login node",
    ["host"],
    registry=REGISTRY,
)
SSH_CONNECTION_FAILURES = Counter(
    "hpcgate_ssh_connection_failures",
    "Times a login node could not be used (connect, host key, certificate, lost "
    "connection), by login node",
    ["host"],
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "hpcgate_store_errors",
    "Requests, scrapes and readiness checks that found the store unreachable",
    registry=REGISTRY,
)
LOGINS = Counter(
    "hpcgate_logins",
    "POST /api/auth by outcome: success, failure (401), locked_out (429), error (other)",
    ["outcome"],
    registry=REGISTRY,
)
IDEMPOTENT_REPLAYS = Counter(
    "hpcgate_idempotent_replays",
    "Submits answered with the job of an earlier request with the same Idempotency-Key",
    registry=REGISTRY,
)


def multiprocess() -> bool:
    """Whether this process pools its figures with others (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get(MULTIPROCESS_ENV))


if not multiprocess():  # the memory and CPU of the one process; meaningless summed
    ProcessCollector(registry=REGISTRY)


async def scheduler_call(machine: str, program: str, call: Awaitable[Completed]) -> Completed:
    """Await ``call``, a scheduler command, counting it and its time by outcome."""
    command = os.path.basename(program)
    started = time.monotonic()
    outcome: str | None = "cancelled"
    try:
        done = await call
        outcome = "ok" if done.returncode == 0 else "failed"
        return done
    except NotWritten:
        outcome = None  # the file it reads was not written: it never ran
        raise
    except TimedOut:
        outcome = "timeout"
        raise
    except GatewayError:
        outcome = "unavailable"
        raise
    finally:
        if outcome is not None:
            SCHEDULER_CALLS.labels(machine, command, outcome).inc()
            SCHEDULER_SECONDS.labels(machine, command).observe(time.monotonic() - started)


def ssh_connection_opened(host: str) -> None:
    """Count a connection opened to login node ``host`` and now in the pool."""
    SSH_CONNECTIONS_OPENED.labels(host).inc()
    SSH_CONNECTIONS_OPEN.labels(host).inc()


def login_outcome(status: int) -> str:
    """The outcome of a login answered with HTTP ``status``."""
    return {200: "success", 401: "failure", 429: "locked_out"}.get(status, "error")


# -- the clusters, from the snapshots ---------------------------------------------------

# vpenso/prometheus-slurm-exporter's per-state gauges (slurm_queue_<state>,
# slurm_nodes_<state>), kept so its dashboards work. Node states are sinfo's compact ones.
QUEUE_STATES = (
    "pending",
    "running",
    "suspended",
    "cancelled",
    "completing",
    "completed",
    "configuring",
    "failed",
    "timeout",
    "preempted",
    "node_fail",
)
NODE_STATES = {
    "alloc": "alloc",
    "comp": "comp",
    "down": "down",
    "drain": "drain",
    "drng": "drain",
    "drained": "drain",
    "err": "err",
    "fail": "fail",
    "failg": "fail",
    "idle": "idle",
    "maint": "maint",
    "mix": "mix",
    "resv": "resv",
    "plnd": "plnd",
}


def job_state(state: str) -> str:
    """A job's state word in lower case, e.g. ``pending`` for ``PENDING`` (Slurm-web's)."""
    return state.split(" ", 1)[0].rstrip("+").lower() or "unknown"


class ClusterCollector(Collector):
    """The clusters' series from one read of the snapshots (None: the store is down)."""

    def __init__(
        self, snapshots: Mapping[str, Snapshot | None] | None, now: float, stale_after: float
    ) -> None:
        self.snapshots = snapshots
        self.now = now
        self.stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "hpcgate_build_info", "The gateway's version (always 1)", labels=["version"]
        )
        info.add_metric([hpcgate.__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "hpcgate_store_up",
            "Whether this scrape could read the snapshots from the store",
            value=0 if self.snapshots is None else 1,
        )
        if self.snapshots is None:
            return
        present = {name: s for name, s in self.snapshots.items() if s is not None}
        yield from self._probes(present)
        yield from self._jobs(present)
        yield from self._nodes(present)

    def _probes(self, snapshots: Mapping[str, Snapshot]) -> Iterator[Metric]:
        families = {
            "duration": GaugeMetricFamily(
                "hpcgate_probe_duration_seconds",
                "How long the monitor's last probe of the machine took",
                labels=["machine"],
            ),
            "success": GaugeMetricFamily(
                "hpcgate_probe_success",
                "Whether the monitor's last probe of the machine succeeded",
                labels=["machine"],
            ),
            "health": GaugeMetricFamily(
                "hpcgate_probe_health",
                "Success rate of the machine's last monitor.history probes (0 to 1)",
                labels=["machine"],
            ),
            "age": GaugeMetricFamily(
                "hpcgate_snapshot_age_seconds",
                "Seconds since the machine's last probe started",
                labels=["machine"],
            ),
            "data_age": GaugeMetricFamily(
                "hpcgate_snapshot_data_age_seconds",
                "Seconds since the machine's jobs and nodes were last read successfully",
                labels=["machine"],
            ),
        }
        stale = GaugeMetricFamily(
            "hpcgate_snapshot_stale",
            "1 when the machine has no snapshot newer than status.stale_after (no monitor)",
            labels=["machine"],
        )
        for name in sorted(self.snapshots or {}):
            snapshot = snapshots.get(name)
            age = None if snapshot is None else self.now - snapshot.taken
            stale.add_metric([name], 1 if age is None or age > self.stale_after else 0)
            if snapshot is None:
                continue
            families["duration"].add_metric([name], snapshot.probe_seconds)
            families["success"].add_metric([name], 1 if snapshot.ok else 0)
            families["health"].add_metric([name], snapshot.health)
            families["age"].add_metric([name], max(0.0, self.now - snapshot.taken))
            if snapshot.data_taken is not None:
                families["data_age"].add_metric([name], max(0.0, self.now - snapshot.data_taken))
        yield from families.values()
        yield stale

    def _jobs(self, snapshots: Mapping[str, Snapshot]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "slurm_jobs",
            "Jobs in the queue by machine, partition and state (the monitor's last snapshot)",
            labels=["machine", "partition", "state"],
        )
        queue = {
            state: GaugeMetricFamily(
                f"slurm_queue_{state}",
                f"Jobs in state {state} on the machine (vpenso exporter's name)",
                labels=["machine"],
            )
            for state in QUEUE_STATES
        }
        dependency = GaugeMetricFamily(
            "slurm_queue_pending_dependency",
            "Pending jobs waiting for a dependency (vpenso exporter's name)",
            labels=["machine"],
        )
        for name, snapshot in sorted(snapshots.items()):
            tally = Tally[tuple[str, str]]()
            for (partition, state), count in snapshot.tally.states.items():
                tally[(partition, job_state(state))] += count
            for (partition, state), count in sorted(tally.items()):
                jobs.add_metric([name, partition, state], count)
            by_state = _sum_by(tally.items(), lambda key: key[1])
            for state, family in queue.items():
                family.add_metric([name], by_state.get(state, 0))
            waiting = sum(
                count
                for state, count in snapshot.tally.on_dependency.items()
                if job_state(state) == "pending"
            )
            dependency.add_metric([name], waiting)
        yield jobs
        yield from queue.values()
        yield dependency

    def _nodes(self, snapshots: Mapping[str, Snapshot]) -> Iterator[Metric]:
        nodes = GaugeMetricFamily(
            "slurm_nodes",
            "Nodes by machine, partition and state (sinfo's compact state; a node in two "
            "partitions counts in both)",
            labels=["machine", "partition", "state"],
        )
        legacy = {
            state: GaugeMetricFamily(
                f"slurm_nodes_{state}",
                f"Nodes in state {state} by machine and partition (vpenso exporter's name)",
                labels=["machine", "partition"],
            )
            for state in sorted(set(NODE_STATES.values()))
        }
        for name, snapshot in sorted(snapshots.items()):
            for partition, counts in sorted(snapshot.partitions.items()):
                for state, count in sorted(counts.items()):
                    nodes.add_metric([name, partition, state], count)
                by_state = _sum_by(counts.items(), lambda state: NODE_STATES.get(state, ""))
                for state, family in legacy.items():
                    family.add_metric([name, partition], by_state.get(state, 0))
        yield nodes
        yield from legacy.values()


def _sum_by(items: Iterable[tuple[T, int]], key: Callable[[T], str]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for item, count in items:
        group = key(item)
        sums[group] = sums.get(group, 0) + count
    return sums


class _Exposition(Collector):
    def __init__(self, collectors: list[Collector]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition(cluster: ClusterCollector) -> bytes:
    """The text exposition of every series: this process's (or all processes') and the
    clusters'."""
    if multiprocess():
        pooled = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(pooled)  # type: ignore[no-untyped-call]
        own: Collector = pooled
    else:
        own = REGISTRY
    return generate_latest(_Exposition([own, cluster]))
