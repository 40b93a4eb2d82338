"""What keeps the dashboard's pages safe in a browser: its headers and CSRF tokens.

A form that changes something is accepted only when (1) the browser says it came from the
gateway's own origin (the API's rule, :func:`hpcgate.api.deps.same_origin`) and (2) it
carries the page's CSRF token. A logged-in user's token is derived from their session
token (which only their browser holds, in an HttpOnly cookie), so it needs no storage and
is the same on every gateway process; the login form, before there is a session, uses a
random value kept in a cookie of its own (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TypeVar

from starlette.responses import Response

R = TypeVar("R", bound=Response)

CSRF_FIELD = "csrf_token"
LOGIN_CSRF_COOKIE = "hpcgate_login_csrf"

# No inline script or style anywhere: scripts, styles, images and fetches come from the
# gateway itself; no page may be framed (clickjacking) or post a form elsewhere.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
# The docs page is FastAPI's Swagger UI page, which starts Swagger UI with an inline script.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def csrf_token(session_token: str) -> str:
    """The CSRF token of the session whose token is ``session_token``."""
    return hmac.new(session_token.encode(), b"hpcgate-web-csrf", hashlib.sha256).hexdigest()


def new_login_token() -> str:
    return secrets.token_hex(32)


def same_token(expected: str | None, given: object) -> bool:
    """Whether ``given`` (a form field) equals ``expected``, compared in constant time."""
    if not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def page_headers(response: R, *, csp: str = PAGE_CSP) -> R:
    """Set the page's own security headers (the API's middleware adds only those a
    response does not set itself)."""
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Frame-Options"] = "DENY"
    # The API's no-referrer would make the browser send "Origin: null" with the pages'
    # own form posts, which the origin check refuses; nothing leaves for other sites.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response
