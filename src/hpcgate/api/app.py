"""The FastAPI application: routes under /api, every answer in the NEWT envelope."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

import hpcgate
from hpcgate.api.envelope import EncodedAnswers, failure
from hpcgate.api.middleware import AuditLog, SecurityHeaders
from hpcgate.api.routes import auth, command, jobs
from hpcgate.config import Config
from hpcgate.errors import GatewayError
from hpcgate.gateway import Gateway

log = logging.getLogger(__name__)

DESCRIPTION = """\
A NEWT-style HPC gateway. Every call answers
`{"status": "OK"|"ERROR", "output": ..., "status_code": <HTTP status>, "error": "..."}`.
Log in with `POST /api/auth`, then send the session cookie or `Authorization: Bearer <token>`.
Everything runs on the machine as the logged-in user.
"""


def create_app(config: Config, gateway: Gateway | None = None) -> FastAPI:
    """The ASGI application for ``config``."""
    gw = gateway or Gateway.from_config(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = None
        if config.embedded_monitors and gw.machines:
            task = asyncio.create_task(gw.monitor().run_forever(stop), name="monitor")
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            await gw.store.close()

    app = FastAPI(
        lifespan=lifespan,
        title="hpcgate",
        version=hpcgate.__version__,
        description=DESCRIPTION,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.gateway = gw
    app.state.answers = EncodedAnswers()
    app.add_middleware(AuditLog, target=config.audit.file)
    app.add_middleware(SecurityHeaders, hsts=config.auth.cookie_secure)
    for module in (auth, command, jobs):
        app.include_router(module.router, prefix="/api")

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
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
