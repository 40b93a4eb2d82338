"""POST/GET/DELETE /api/auth: log in, who am I, log out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hpcgate import contract
from hpcgate.api import schemas
from hpcgate.api.body import read_fields, text_field
from hpcgate.api.deps import COOKIE_NAME, client_address, gateway, request_token, same_origin
from hpcgate.api.envelope import ok
from hpcgate.api.routes import route
from hpcgate.errors import Forbidden, NotLoggedIn
from hpcgate.stores.base import Session

router = APIRouter(tags=["auth"])


def _who(username: str, session: Session) -> dict[str, object]:
    return {
        "auth": True,
        "username": username,
        "session_lifetime": session.remaining,
        "expires": contract.session_expiry(session.expires),
    }


@route(
    router,
    "/auth",
    ["POST"],
    summary="Log in",
    description=(
        "Starts a session: sets an HttpOnly cookie and returns a bearer token for scripts. "
        "Refused (403) when a browser says the form was posted from another site."
    ),
    openapi_extra=schemas.body(schemas.LoginBody),
    responses=schemas.example(schemas.LOGIN_EXAMPLE),
)
async def login(request: Request) -> JSONResponse:
    if not same_origin(request):
        # Else another site's form could log the victim's browser into the attacker's
        # account (login CSRF); clients that send neither Origin nor Referer pass.
        raise Forbidden("cross-site login refused: log in from this gateway's own pages")
    fields = await read_fields(request)
    username = text_field(
        fields, "username", max_length=contract.max_length(contract.LOGIN, "username")
    )
    request.state.audit_user = username
    password = text_field(
        fields, "password", max_length=contract.max_length(contract.LOGIN, "password")
    )
    gw = gateway(request)
    token, session, account = await gw.login.login(username, password, client_address(request))
    response = ok(_who(account.name, session) | {"token": token})
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=gw.config.auth.session_lifetime,
        path="/",
        httponly=True,
        samesite="strict",
        secure=gw.config.auth.cookie_secure,
    )
    return response


@route(
    router,
    "/auth",
    ["GET"],
    summary="Who is logged in",
    responses=schemas.example({"auth": False, "username": None}, "Not logged in (or the session)"),
)
async def whoami(request: Request) -> JSONResponse:
    try:
        account, session = await gateway(request).login.account_for(request_token(request))
    except NotLoggedIn:
        return ok({"auth": False, "username": None})
    return ok(_who(account.name, session))


@route(
    router,
    "/auth",
    ["DELETE"],
    summary="Log out",
    responses=schemas.example({"auth": False, "username": None}),
)
async def logout(request: Request) -> JSONResponse:
    await gateway(request).login.logout(request_token(request))
    response = ok({"auth": False, "username": None})
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response
