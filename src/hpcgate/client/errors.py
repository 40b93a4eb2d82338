"""The client's exceptions: the gateway's error tree, plus what only a client can meet.

Every error from the gateway arrives as its envelope and is raised as the class for its
status (``NotLoggedIn`` for 401, ``NotFound`` for 404, ...), carrying the server's message.
"""

from __future__ import annotations

from hpcgate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    NotLoggedIn,
    TimedOut,
    TooManyRequests,
    Unavailable,
)


class ServerError(GatewayError):
    """The gateway failed in a way it did not classify (5xx other than 503/504)."""


class ConnectionFailed(Unavailable):
    """The gateway could not be reached at all (DNS, refused, TLS, reset)."""


class WaitTimedOut(GatewayError):
    """``wait`` gave up before the job reached a final state; the job is untouched."""

    status_code = 0


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    401: NotLoggedIn,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: TooManyRequests,
    503: Unavailable,
    504: TimedOut,
}


def error_for(status: int, message: str) -> GatewayError:
    """The exception for an HTTP status and the envelope's ``error``."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BadRequest
    error = cls(message or f"HTTP {status}")
    error.status_code = status
    return error


__all__ = [
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "GatewayError",
    "NotFound",
    "NotLoggedIn",
    "ServerError",
    "TimedOut",
    "TooManyRequests",
    "Unavailable",
    "WaitTimedOut",
    "error_for",
]
