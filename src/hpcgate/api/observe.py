"""Following requests: a request id on every answer and log line, request metrics, logs.

Each request gets an id: the client's (or the proxy's) ``X-Request-ID`` when it is a
sane token, else a new one. It is echoed in the answer's ``X-Request-ID``, kept in
``request.state.request_id`` (the audit log writes it) and added to every log line
written while the request is served, so one request can be followed from the reverse
proxy through the gateway's log to the audit log.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate import metrics
from hpcgate.config import ServerConfig

REQUEST_ID_HEADER = b"x-request-id"
# What a proxy or client may choose: UUIDs, nginx's $request_id, AWS-style trace ids. No
# spaces, quotes or control characters, so it is safe in headers, JSON and log lines.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:=+/@-]{1,128}")
LOGIN_ROUTE = "/api/auth"
UNMATCHED = "unmatched"
MAX_SERIES = 4096  # (route, method, status) children kept at hand

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being served in this context, if any."""


def choose_request_id(offered: str | None) -> str:
    """``offered`` when it is a sane token, else a new random id."""
    if offered is not None and _SANE_REQUEST_ID.fullmatch(offered):
        return offered
    return secrets.token_hex(16)  # as random as a UUID4's hex, for a quarter of the time


# id(route) -> (route, its template): a route's include prefix never changes. Keyed by id
# because Starlette's routes compare by value and so cannot be hashed; the route is held,
# so its id is not reused while it is here.
_templates: dict[int, tuple[object, str]] = {}


def route_template(scope: Scope) -> str:
    """The matched route's path template, e.g. ``/api/job/{name}/{jobid}``; ``unmatched``
    for a path no route knows (raw paths would make one series per URL)."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    known = _templates.get(id(route))
    if known is None or known[0] is not route:
        known = _templates[id(route)] = (route, _template(route, scope["path"]))
    return known[1]


def _template(route: object, path: str) -> str:
    template, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
    if not isinstance(template, str) or not isinstance(pattern, re.Pattern):
        return UNMATCHED
    # The route may know its path without the prefix of the router it was included with
    # (FastAPI includes routers lazily): that prefix is what precedes the part it matched.
    for start in (i for i, char in enumerate(path) if char == "/"):
        if pattern.fullmatch(path[start:]):
            template = path[:start] + template
            break
    return template.rstrip("/") or "/"  # every route also answers with a trailing slash


def begin_request(scope: Scope) -> tuple[str, Token[str | None]]:
    """The request's id, chosen once (kept in ``scope["state"]``, with when it began: see
    :func:`request_seconds`) and set for the log lines written while it is served; reset
    the returned token when it is answered."""
    state = scope.setdefault("state", {})
    state.setdefault("started", time.monotonic())
    rid: str | None = state.get("request_id")
    if rid is None:
        offered = next(
            (value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), None
        )
        rid = choose_request_id(offered.decode("latin-1") if offered is not None else None)
        state["request_id"] = rid
    return rid, request_id.set(rid)


def request_seconds(scope: Scope) -> float:
    """How long the request has taken, from the first layer that saw it (a cached read
    handed on to the routes counts its attempt too)."""
    started: float = scope.get("state", {}).get("started", time.monotonic())
    return time.monotonic() - started


class RequestMetrics:
    """The request counters and latency histogram, by route template, method and status."""

    def __init__(self) -> None:
        # the metric children of each (route, method, status), found once: labels() takes
        # a lock and builds its key on every call
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        """Count a request of ``scope`` answered ``status`` after ``seconds``."""
        route, method = route_template(scope), scope["method"]
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                metrics.REQUESTS.labels(route, method, str(status)),
                metrics.REQUEST_SECONDS.labels(route, method),
            )
            if len(self._children) < MAX_SERIES:
                self._children[key] = children
        counted, timed = children
        counted.inc()
        timed.observe(seconds)
        if route == LOGIN_ROUTE and method == "POST":
            metrics.LOGINS.labels(metrics.login_outcome(status)).inc()


class Observe:
    """ASGI middleware, outermost: the request id, then the request's metrics."""

    def __init__(self, app: ASGIApp, *, counted: RequestMetrics) -> None:
        self.app = app
        self.counted = counted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, token = begin_request(scope)
        status = 500  # if no answer is started at all

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, rid.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            self.counted.record(scope, status, request_seconds(scope))
            request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            entry["request_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        current = request_id.get()
        return f"{line} [request {current}]" if current is not None else line


def configure_logging(server: ServerConfig) -> None:
    """Send every log line (uvicorn's too) to stderr, as text or JSON by
    ``server.log_format``, at ``server.log_level``."""
    handler = logging.StreamHandler(sys.stderr)
    if server.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(server.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
