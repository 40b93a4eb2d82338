"""The reads answered from snapshots, served in front of FastAPI and its middleware.

``GET /api/job`` and a user's ``GET /api/job/<machine>`` are most of a gateway's traffic
and, between two snapshots, the same bytes every time; an ended job's detail,
``GET /api/job/<machine>/<jobid>``, is the final record the monitors kept. Through
FastAPI's router, request object, dependency solving and eight nested middleware layers
they cost several times what serving the bytes costs (a profile: bench/README.md, "Where
the time goes"). This layer, the outermost one, answers them directly with the same
helpers as the routes in :mod:`hpcgate.api.routes.jobs`, and gives each answer what the
middleware stack gives every other one, from the same objects: the request id
(:func:`hpcgate.api.observe.begin_request`), the security headers
(:func:`hpcgate.api.middleware.security_headers`), the audit line
(:class:`hpcgate.api.middleware.AuditTrail`) and the request metrics
(:class:`hpcgate.api.observe.RequestMetrics`). Every other request, and any read it cannot
answer from what is kept (not logged in, unknown machine, a live listing, a job without a
final record, a request with a body, a store error), goes to the application untouched,
with the same request id: the route then answers it, errors included.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from hpcgate.api.deps import caller
from hpcgate.api.envelope import EncodedAnswers
from hpcgate.api.middleware import AuditTrail, RawHeaders
from hpcgate.api.observe import (
    REQUEST_ID_HEADER,
    RequestMetrics,
    begin_request,
    request_id,
    request_seconds,
)
from hpcgate.api.routes import jobs
from hpcgate.errors import GatewayError
from hpcgate.gateway import Gateway
from hpcgate.jobspec import parse_jobid

log = logging.getLogger(__name__)

PREFIX = "/api/job"
Reply = tuple[int, RawHeaders, bytes]


def _routes(endpoint: Any) -> dict[bool, APIRoute]:
    """The GET routes of ``endpoint``, by whether their path ends with a slash."""
    found = {
        route.path.endswith("/"): route
        for route in jobs.router.routes
        if isinstance(route, APIRoute)
        and route.endpoint is endpoint
        and "GET" in (route.methods or ())
    }
    assert set(found) == {False, True}, f"{endpoint.__name__}: a GET route with and without /"
    return found


class CachedReads:
    """ASGI layer answering the status, own-queue and ended-job reads from what is kept."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        headers: RawHeaders,
        trail: AuditTrail,
        counted: RequestMetrics,
    ) -> None:
        self.app = app
        self.headers = headers
        self.trail = trail
        self.counted = counted
        # Set on the scope as the router does, for what reads it (metrics, audit line).
        self.status_routes = _routes(jobs.status)
        self.queue_routes = _routes(jobs.queue)
        self.job_routes = _routes(jobs.job)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "http" else ""
        if scope.get("method") != "GET" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        rid, token = begin_request(scope)
        try:
            reply = await self._reply(scope, receive, path[len(PREFIX) :])
            if reply is None:
                await self.app(scope, receive, send)
                return
            status, headers, body = reply
            headers += self.headers
            headers.append((REQUEST_ID_HEADER, rid.encode()))
            if self.trail.records(scope):  # before the client can see the answer
                self.trail.write(scope, status, request_seconds(scope))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self.counted.record(scope, status, request_seconds(scope))
        finally:
            request_id.reset(token)

    async def _reply(self, scope: Scope, receive: Receive, rest: str) -> Reply | None:
        """The answer from what is kept, or None for the application to answer."""
        if_none_match, has_body = _read_headers(scope)
        if has_body:
            return None  # the body limits and the route decide what it means
        slash = rest.endswith("/")
        trimmed = rest[:-1] if slash else rest
        # the routes' own paths: /api/job, /api/job/<m>, /api/job/<m>/<id>, each with or
        # without one trailing slash (an empty segment is no route: the router's 404)
        parts = trimmed.split("/")[1:] if trimmed.startswith("/") else []
        try:
            if trimmed == "":
                return await self._status(scope, receive, slash, if_none_match)
            if len(parts) == 1 and parts[0]:
                return await self._queue(scope, receive, parts[0], slash, if_none_match)
            if len(parts) == 2 and all(parts):
                return await self._kept_job(scope, receive, parts[0], parts[1], slash)
        except GatewayError:
            pass  # the route answers it, in the envelope
        except Exception:
            log.exception("a cached read failed; the route answers it")
        return None

    async def _status(
        self, scope: Scope, receive: Receive, slash: bool, if_none_match: bytes | None
    ) -> Reply:
        app = scope["app"]
        gw: Gateway = app.state.gateway
        if not gw.config.status.public:
            await caller(Request(scope, receive))
        version, output = await gw.status.current()
        answers: EncodedAnswers = app.state.answers
        scope["route"] = self.status_routes[slash]
        return jobs.cached_reply(answers.encoded("status", version, output), if_none_match, [])

    async def _queue(
        self,
        scope: Scope,
        receive: Receive,
        name: str,
        slash: bool,
        if_none_match: bytes | None,
    ) -> Reply | None:
        app = scope["app"]
        gw: Gateway = app.state.gateway
        target = gw.machines.get(name)
        if target is None or target.queue_cache is None:
            return None
        who = await caller(Request(scope, receive))
        listing = await target.queue_cache.listing(who.account)
        if listing is None:
            return None  # a live listing: the route asks the scheduler
        scope["route"] = self.queue_routes[slash]
        scope["path_params"] = {"name": name}
        answers: EncodedAnswers = app.state.answers
        return jobs.queue_reply(answers, target.name, who, listing, if_none_match)

    async def _kept_job(
        self, scope: Scope, receive: Receive, name: str, jobid: str, slash: bool
    ) -> Reply | None:
        app = scope["app"]
        gw: Gateway = app.state.gateway
        target = gw.machines.get(name)
        if target is None or target.events is None:
            return None  # nothing is kept: the route asks the scheduler
        who = await caller(Request(scope, receive))
        rows = await target.kept_job(who.account, parse_jobid(jobid))
        if rows is None:
            return None  # a job not ended, or not kept: the route asks the scheduler
        scope["route"] = self.job_routes[slash]
        scope["path_params"] = {"name": name, "jobid": jobid}
        answer = jobs.job_reply(rows)
        return answer.status_code, list(answer.raw_headers), bytes(answer.body)


def _read_headers(scope: Scope) -> tuple[bytes | None, bool]:
    """The request's ``If-None-Match``, and whether it declares a body."""
    if_none_match = None
    has_body = False
    for key, value in scope["headers"]:
        if key == b"if-none-match" and if_none_match is None:  # the first, as Starlette's
            if_none_match = bytes(value)
        elif key in (b"content-length", b"transfer-encoding"):
            has_body = has_body or key == b"transfer-encoding" or value.strip() != b"0"
    return if_none_match, has_body
