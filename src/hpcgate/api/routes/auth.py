"""POST/GET/DELETE /api/auth: log in, who am I, log out."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hpcgate.api import schemas
from hpcgate.api.body import read_fields, text_field
from hpcgate.api.deps import COOKIE_NAME, client_address, gateway, request_token
from hpcgate.api.envelope import ok
from hpcgate.api.routes import route
from hpcgate.auth.sessions import Session
from hpcgate.errors import NotLoggedIn

router = APIRouter(tags=["auth"])


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who(username: str, session: Session) -> dict[str, object]:
    return {
        "auth": True,
        "username": username,
        "session_lifetime": session.remaining,
        "expires": _iso(session.expires),
    }


@route(
    router,
    "/auth",
    ["POST"],
    summary="Log in",
    description="Starts a session: sets an HttpOnly cookie and returns a bearer token for scripts.",
    openapi_extra=schemas.body(schemas.LoginBody),
    responses=schemas.example(schemas.LOGIN_EXAMPLE),
)
async def login(request: Request) -> JSONResponse:
    fields = await read_fields(request)
    username = text_field(fields, "username", max_length=256)
    request.state.audit_user = username
    password = text_field(fields, "password", max_length=4096)
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
