"""GET /healthz, /readyz and /metrics: for load balancers, orchestrators and Prometheus.

These sit beside the NEWT API, not in it: plain JSON (and Prometheus text), no envelope,
no login, and never a scheduler call. /readyz checks what a request needs: the store
answers, every machine has a fresh snapshot (so a monitor is running), and every SSH
machine has a login node accepting TCP connections (connected to and closed at once,
without logging in). Its result is reused for a second, so callers cannot make the
gateway hammer the store or the login nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import re
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from hpcgate import metrics
from hpcgate.api.deps import client_address, gateway
from hpcgate.gateway import Gateway
from hpcgate.stores.base import StoreUnavailable
from hpcgate.stores.snapshot import Snapshot

router = APIRouter(tags=["health"])
READINESS_REUSE_SECONDS = 1.0
_CREDENTIALS_IN_URL = re.compile(r"//[^/@\s]*@")


class Liveness(BaseModel):
    status: str = Field(description="always 'ok': the process answers", examples=["ok"])


class Check(BaseModel):
    ok: bool
    reason: str = Field("", description="why not, when not ok")


class Readiness(BaseModel):
    ready: bool = Field(description="true when every check passed (HTTP 200; else 503)")
    checks: dict[str, Check] = Field(
        description="by part: 'store', 'snapshot:<machine>', 'login_nodes:<machine>'",
        examples=[
            {
                "store": {"ok": True, "reason": ""},
                "snapshot:ln3": {
                    "ok": False,
                    "reason": "the last snapshot is 95 s old (status.stale_after = 30 s)",
                },
            }
        ],
    )


@router.api_route(
    "/healthz",
    methods=["GET", "HEAD"],
    summary="Liveness: the process answers",
    response_model=Liveness,
)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.api_route(
    "/readyz",
    methods=["GET", "HEAD"],
    summary="Readiness: store reachable, snapshots fresh, a login node per SSH machine",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; the reason per part"}},
)
async def readyz(request: Request) -> JSONResponse:
    readiness = await _checker(request).check(gateway(request))
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)


@dataclass
class _Checked:
    at: float
    readiness: Readiness


class ReadinessChecker:
    """Runs the readiness checks, at most once per ``READINESS_REUSE_SECONDS``."""

    def __init__(self) -> None:
        self._last: _Checked | None = None
        self._lock = asyncio.Lock()

    async def check(self, gw: Gateway) -> Readiness:
        async with self._lock:  # concurrent callers share one round of checks
            now = time.monotonic()
            if self._last is None or now - self._last.at > READINESS_REUSE_SECONDS:
                self._last = _Checked(now, await _readiness(gw))
            return self._last.readiness


def _checker(request: Request) -> ReadinessChecker:
    checker: ReadinessChecker | None = getattr(request.app.state, "readiness", None)
    if checker is None:
        checker = request.app.state.readiness = ReadinessChecker()
    return checker


async def _readiness(gw: Gateway) -> Readiness:
    names = sorted(gw.machines)
    checks: dict[str, Check] = {}
    snapshots: dict[str, Snapshot | None] | None = None
    try:
        await gw.stores.sessions.get("hpcgate-readiness-probe")  # a round trip, machines or not
        snapshots = await gw.stores.status.get_many(names)
        checks["store"] = Check(ok=True)
    except StoreUnavailable as exc:
        metrics.STORE_ERRORS.inc()
        checks["store"] = Check(ok=False, reason=_CREDENTIALS_IN_URL.sub("//***@", exc.message))
    stale_after = gw.config.status.stale_after
    now = time.time()
    for name in names:
        if snapshots is None:
            checks[f"snapshot:{name}"] = Check(ok=False, reason="the store cannot be read")
            continue
        snapshot = snapshots.get(name)
        if snapshot is None:
            reason = "no snapshot yet: is a monitor running (hpcgate monitor)?"
            checks[f"snapshot:{name}"] = Check(ok=False, reason=reason)
        elif now - snapshot.taken > stale_after:
            age = now - snapshot.taken
            reason = (
                f"the last snapshot is {age:.0f} s old (status.stale_after = {stale_after:g} s): "
                "is its monitor running?"
            )
            checks[f"snapshot:{name}"] = Check(ok=False, reason=reason)
        else:
            checks[f"snapshot:{name}"] = Check(ok=True)
    remote = {
        name: section.ssh.hosts
        for name, section in gw.config.machines.items()
        if section.ssh is not None and section.runner == "ssh"
    }
    timeout = gw.config.health.connect_timeout
    results = await asyncio.gather(*(_login_nodes(hosts, timeout) for hosts in remote.values()))
    for name, check in zip(remote, results, strict=True):
        checks[f"login_nodes:{name}"] = check
    return Readiness(ready=all(check.ok for check in checks.values()), checks=checks)


async def _login_nodes(hosts: list[str], timeout: float) -> Check:
    """Ok when at least one of ``hosts`` ('host' or 'host:port') accepts a TCP connection."""
    failures = await asyncio.gather(*(_connect(host, timeout) for host in hosts))
    if any(failure is None for failure in failures):
        return Check(ok=True)
    reasons = "; ".join(f"{host}: {failure}" for host, failure in zip(hosts, failures, strict=True))
    return Check(ok=False, reason=f"no login node accepts connections ({reasons})")


async def _connect(host: str, timeout: float) -> str | None:
    """None when ``host`` accepts a TCP connection within ``timeout``; else why not."""
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(name or host, int(port) if port else 22), timeout
        )
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:  # e.g. "Connection refused", "No route to host"
        return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):  # closed all the same
        await writer.wait_closed()
    return None


# -- /metrics ---------------------------------------------------------------------------

metrics_router = APIRouter(tags=["health"])


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    description="The gateway's series and the clusters' from the monitors' snapshots; "
    "access is set by [metrics] token and allow.",
    response_class=PlainTextResponse,
    responses={401: {"description": "token missing"}, 403: {"description": "address refused"}},
)
async def prometheus_metrics(request: Request) -> Response:
    gw = gateway(request)
    settings = gw.config.metrics
    if settings.allow and not _allowed(client_address(request), settings.allow):
        return PlainTextResponse(
            f"{client_address(request)} may not read /metrics (metrics.allow)\n", 403
        )
    if settings.token:
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            offered.strip().encode(), settings.token.encode()
        ):
            return PlainTextResponse(
                "/metrics needs 'Authorization: Bearer <metrics.token>'\n",
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    snapshots: dict[str, Snapshot | None] | None
    try:
        snapshots = await gw.stores.status.get_many(sorted(gw.machines))
    except StoreUnavailable:
        metrics.STORE_ERRORS.inc()
        snapshots = None
    cluster = metrics.ClusterCollector(snapshots, time.time(), gw.config.status.stale_after)
    body = metrics.exposition(cluster)
    return Response(body, media_type=metrics.CONTENT_TYPE)


def _allowed(address: str, networks: list[str]) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    if client.version == 6 and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    return any(client in ipaddress.ip_network(network, strict=False) for network in networks)
