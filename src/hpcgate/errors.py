"""The exception tree every layer raises; the HTTP layer turns each into an envelope.

Each error carries the HTTP status it maps to and a message meant for a person: it says
what went wrong and, where it can, what to do about it.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error that hpcgate reports to a caller."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    """The caller's input is wrong (400)."""

    status_code = 400


class NotLoggedIn(GatewayError):
    """No valid session or token (401)."""

    status_code = 401


class Forbidden(GatewayError):
    """Logged in, but not allowed: someone else's job, a path the user may not write (403)."""

    status_code = 403


class NotFound(GatewayError):
    """Unknown machine, job or route (404)."""

    status_code = 404


class Conflict(GatewayError):
    """The request clashes with the current state, e.g. killing a finished job (409)."""

    status_code = 409


class TooManyRequests(GatewayError):
    """Too many failed logins from this user or address for now (429)."""

    status_code = 429


class Unavailable(GatewayError):
    """The scheduler or the machine cannot be reached right now (503)."""

    status_code = 503


class TimedOut(GatewayError):
    """An action ran past its time limit and was killed (504)."""

    status_code = 504


class NotWritten(Exception):
    """A file a program was to read could not be written, so the program never ran;
    ``error`` is what writing it alone would have raised."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(str(error))
        self.error = error
