"""ASGI middleware: security headers on every answer, and the audit log."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate.api.observe import request_seconds

log = logging.getLogger(__name__)

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# The API answers JSON only; the docs page (Swagger UI) needs its scripts and styles.
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
RawHeaders = list[tuple[bytes, bytes]]


def security_headers(*, hsts: bool, api: bool = True) -> RawHeaders:
    """The headers every answer gets; ``api`` adds the API's content security policy (the
    docs page has its own)."""
    headers = [*_HEADERS]
    if hsts:
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return [*headers, _API_CSP] if api else headers


class SecurityHeaders:
    """Adds the headers a browser needs to treat API answers safely."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.extra = security_headers(hsts=hsts, api=False)
        self.extra_api = security_headers(hsts=hsts)
        self.names = frozenset(name for name, _ in self.extra_api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.extra if scope["path"].startswith("/api/docs") else self.extra_api

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                names = self.names
                if any(name.lower() in names for name, _ in headers):
                    # a response that sets one of these itself (the dashboard's pages:
                    # their own CSP, cacheable static files) keeps its own
                    own = {name.lower() for name, _ in headers}
                    message["headers"] = [
                        *headers,
                        *(header for header in extra if header[0] not in own),
                    ]
                else:
                    message["headers"] = [*headers, *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class AuditTrail:
    """The audit log: one JSON line per request that acts (who, from where, on what, the
    outcome), to a file, to stdout (``-``) or nowhere (empty).

    Routes record the user, machine and job id in ``request.state``; no header, body,
    password or token is ever written.
    """

    def __init__(self, target: str) -> None:
        self.stream: IO[str] | None = None
        if target == "-":
            self.stream = sys.stdout
        elif target:
            self.stream = open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def records(self, scope: Scope) -> bool:
        """Whether a request of ``scope`` gets a line."""
        return self.stream is not None and scope["type"] == "http" and _audited(scope)

    def write(self, scope: Scope, status: int, seconds: float) -> None:
        """The line of a request answered ``status`` after ``seconds``."""
        state: dict[str, Any] = scope.get("state", {})
        params: dict[str, Any] = scope.get("path_params", {})
        client = scope.get("client")
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "user": state.get("audit_user"),
            "client": client[0] if client else None,
            "method": scope["method"],
            "route": scope["path"],
            "machine": params.get("name"),
            "jobid": state.get("audit_jobid") or params.get("jobid"),
            "status": status,
            "outcome": "ok" if status < 400 else "error",
            "seconds": round(seconds, 4),
            "request_id": state.get("request_id"),  # set by hpcgate.api.observe
        }
        assert self.stream is not None
        try:
            self.stream.write(json.dumps(entry) + "\n")
        except OSError:
            log.exception("cannot write the audit log")


class AuditLog:
    """ASGI middleware writing each request's line to ``trail`` before its answer starts."""

    def __init__(self, app: ASGIApp, *, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.trail.records(scope):
            await self.app(scope, receive, send)
            return
        written = False

        async def record_then_send(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                # written before the client can see the answer: an action the client
                # learned about is always in the log
                self.trail.write(scope, message["status"], request_seconds(scope))
                written = True
            await send(message)

        try:
            await self.app(scope, receive, record_then_send)
        finally:
            if not written:  # no answer was started at all
                self.trail.write(scope, 500, request_seconds(scope))


def _audited(scope: Scope) -> bool:
    path: str = scope["path"]
    return path.startswith("/api/") and not path.startswith(("/api/docs", "/api/openapi"))
