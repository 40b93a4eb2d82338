"""The FastAPI application: routes under /api, every answer in the NEWT envelope."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

import hpcgate
from hpcgate import metrics, web
from hpcgate.api.cached_reads import CachedReads
from hpcgate.api.envelope import EncodedAnswers, failure
from hpcgate.api.limits import BodyLimit
from hpcgate.api.middleware import AuditLog, AuditTrail, SecurityHeaders, security_headers
from hpcgate.api.observe import Observe, RequestMetrics
from hpcgate.api.routes import auth, command, events, files, health, jobs, output, subscriptions
from hpcgate.config import Config
from hpcgate.errors import GatewayError
from hpcgate.gateway import Gateway
from hpcgate.stores.base import StoreUnavailable
from hpcgate.wiring import build_gateway, build_monitor

log = logging.getLogger(__name__)

DESCRIPTION = """\
A NEWT-style HPC gateway. Every call answers
`{"status": "OK"|"ERROR", "output": ..., "status_code": <HTTP status>, "error": "..."}`.
Log in with `POST /api/auth`, then send the session cookie or `Authorization: Bearer <token>`.
Everything runs on the machine as the logged-in user.
"""


class GatewayApp(FastAPI):
    """FastAPI with one ASGI layer (``front``) in front of all it does per request: its
    telemetry hook, its middleware stack and its router."""

    front: Callable[[ASGIApp], ASGIApp] | None = None
    _entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._entry is None:
            inner = super().__call__
            self._entry = inner if self.front is None else self.front(inner)
        scope["app"] = self  # as Starlette sets it: the request's app, for the front too
        await self._entry(scope, receive, send)


def create_app(config: Config, gateway: Gateway | None = None) -> FastAPI:
    """The ASGI application for ``config``."""
    gw = gateway or build_gateway(config)
    monitor = build_monitor(gw) if config.embedded_monitors and gw.machines else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = None
        if monitor is not None:
            task = asyncio.create_task(monitor.run_forever(stop), name="monitor")
        if gw.events is not None:
            gw.events.start(deliver=config.webhooks.deliver)
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            if gw.events is not None:
                await gw.events.close()
            await gw.close()

    app = GatewayApp(
        lifespan=lifespan,
        title="hpcgate",
        version=hpcgate.__version__,
        description=DESCRIPTION,
        openapi_url="/api/openapi.json",
        docs_url=None,  # served by hpcgate.web from packaged files, never a CDN
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.gateway = gw
    app.state.answers = EncodedAnswers()
    trail, counted = AuditTrail(config.audit.file), RequestMetrics()
    app.add_middleware(  # refuses an oversized body before anything reads it
        BodyLimit,
        max_body_bytes=config.server.max_body_bytes,
        max_login_body_bytes=config.server.max_login_body_bytes,
    )
    app.add_middleware(AuditLog, trail=trail)
    app.add_middleware(SecurityHeaders, hsts=config.auth.cookie_secure)
    app.add_middleware(Observe, counted=counted)  # the request id is set before the audit log

    def front(stack: ASGIApp) -> ASGIApp:  # gives its answers what the stack gives others
        hsts = config.auth.cookie_secure
        return CachedReads(stack, headers=security_headers(hsts=hsts), trail=trail, counted=counted)

    app.front = front
    for module in (auth, command, jobs, output, files, events, subscriptions):
        app.include_router(module.router, prefix="/api")
    app.include_router(health.router)
    web.install(app)  # the dashboard under /web/, and /api/docs
    if config.metrics.enabled:
        app.include_router(health.metrics_router)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        if isinstance(exc, StoreUnavailable):
            metrics.STORE_ERRORS.inc()
        return failure(exc.status_code, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        messages = {
            404: f"no such route: {request.method} {request.url.path}; see /api/docs",
            405: f"{request.method} is not allowed on {request.url.path}; see /api/docs",
        }
        response = failure(exc.status_code, messages.get(exc.status_code, str(exc.detail)))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: list every method the path accepts
            response.headers["Allow"] = ", ".join(allowed_methods(app, request))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        return failure(400, f"bad request: {problems}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return failure(
            500, "internal error in the gateway; the administrators can see it in the log"
        )

    return app


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods the request's path accepts: those for which some route fully matches."""
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"):
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed
