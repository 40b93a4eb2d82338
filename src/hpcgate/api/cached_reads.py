"""The reads answered from snapshots, served without FastAPI's routing and dependencies.

``GET /api/job`` and a user's ``GET /api/job/<machine>`` are most of a gateway's traffic
and, between two snapshots, the same bytes every time; an ended job's detail,
``GET /api/job/<machine>/<jobid>``, is the final record the monitors kept. Through
FastAPI's router, request object and dependency solving they cost several times what
serving the bytes costs (a profile: bench/README.md, "Where the time goes"). This
middleware, the innermost one, so every other middleware (request id, metrics, security
headers, audit) applies as for any route, answers them directly with the same helpers as
the routes in :mod:`hpcgate.api.routes.jobs`, and hands every other request, and any
read it cannot answer from what is kept (not logged in, unknown machine, a live listing,
a job without a final record, a store error), to the application untouched: the route
then answers it, errors included.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hpcgate.api.deps import caller
from hpcgate.api.envelope import EncodedAnswers
from hpcgate.api.routes import jobs
from hpcgate.errors import GatewayError
from hpcgate.gateway import Gateway
from hpcgate.jobspec import parse_jobid

PREFIX = "/api/job"


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
    """ASGI middleware answering the status and own-queue reads from the snapshots."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Set on the scope as the router does, for what reads it (the request metrics).
        self.status_routes = _routes(jobs.status)
        self.queue_routes = _routes(jobs.queue)
        self.job_routes = _routes(jobs.job)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "http" else ""
        if scope.get("method") != "GET" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        rest = path[len(PREFIX) :]
        slash = rest.endswith("/")
        name = rest.strip("/")
        try:
            if rest in ("", "/"):
                reply = await self._status(scope, receive, slash)
            elif rest.startswith("/") and name and "/" not in name:
                reply = await self._queue(scope, receive, name, slash)
            elif rest.startswith("/") and name.count("/") == 1:
                machine_name, jobid = name.split("/")
                kept = await self._kept_job(scope, receive, machine_name, jobid, slash)
                if kept is not None:
                    await kept(scope, receive, send)
                    return
                reply = None
            else:
                reply = None
        except GatewayError:
            reply = None  # the route answers it, in the envelope
        if reply is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = reply
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _status(
        self, scope: Scope, receive: Receive, slash: bool
    ) -> tuple[int, jobs.RawHeaders, bytes] | None:
        app = scope["app"]
        gw: Gateway = app.state.gateway
        if not gw.config.status.public:
            await caller(Request(scope, receive))
        version, output = await gw.status.current()
        answers: EncodedAnswers = app.state.answers
        scope["route"] = self.status_routes[slash]
        return jobs.cached_reply(
            answers.encoded("status", version, output), _if_none_match(scope), []
        )

    async def _queue(
        self, scope: Scope, receive: Receive, name: str, slash: bool
    ) -> tuple[int, jobs.RawHeaders, bytes] | None:
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
        return jobs.queue_reply(answers, target.name, who, listing, _if_none_match(scope))

    async def _kept_job(
        self, scope: Scope, receive: Receive, name: str, jobid: str, slash: bool
    ) -> Response | None:
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
        return jobs.job_reply(rows)


def _if_none_match(scope: Scope) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"if-none-match":
            return bytes(value)
    return None
