"""Request dependencies: the gateway, the logged-in account, the machine."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from hpcgate.accounts import UnixAccount
from hpcgate.auth.sessions import Session
from hpcgate.gateway import Gateway
from hpcgate.machine import Machine

COOKIE_NAME = "newt_sessionid"


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def request_token(request: Request) -> str | None:
    """The bearer token, else the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Caller:
    account: UnixAccount
    session: Session


def caller(request: Request) -> Caller:
    """The logged-in caller; 401 in the envelope when there is none."""
    account, session = gateway(request).login.account_for(request_token(request))
    return Caller(account, session)


def machine(request: Request, name: str) -> Machine:
    return gateway(request).machine(name)
