"""Request bodies are refused past a size limit before they are held in memory.

A body whose ``Content-Length`` is over the limit is refused before a byte of it is read;
a body without one (chunked) is counted as it streams and refused as soon as it passes the
limit, so the gateway never holds more than the limit of any body. Logging in needs far
less than submitting a script, so ``POST /api/auth`` has a limit of its own.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hpcgate.errors import GatewayError

LOGIN_PATH = "/api/auth"
FILE_PREFIX = "/api/file/"
"""File uploads stream to the machine under its own limit, limits.max_upload_bytes,
enforced by the file routes (hpcgate.api.routes.files), not held here."""


class BodyTooLarge(GatewayError):
    """The request body is larger than its route accepts (413)."""

    status_code = 413


class BodyLimit:
    """ASGI middleware: at most ``max_body_bytes`` of any body, ``max_login_body_bytes`` of
    a login's."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_login_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_login_body_bytes = max_login_body_bytes

    def limit_for(self, path: str) -> tuple[int, str]:
        """The largest body ``path`` accepts, and the setting that says so."""
        if path.rstrip("/") == LOGIN_PATH:
            return self.max_login_body_bytes, "server.max_login_body_bytes"
        return self.max_body_bytes, "server.max_body_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["path"].startswith(FILE_PREFIX) and scope["method"] in ("PUT", "POST")
        ):
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope["path"])

        def message() -> str:
            return (
                f"the request body is larger than {limit} bytes, the most "
                f"{scope['method']} {scope['path']} accepts ({setting})"
            )

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, message())  # before reading any of it
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(message())  # the routes answer it in the envelope
            return event

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses such a request before it gets here
    return None


async def _refuse(send: Send, message: str) -> None:
    body = orjson.dumps({"status": "ERROR", "output": "", "status_code": 413, "error": message})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
