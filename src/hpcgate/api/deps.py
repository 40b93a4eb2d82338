"""Request dependencies: the gateway, the logged-in account, the machine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import Request

from hpcgate.accounts import UnixAccount
from hpcgate.errors import Forbidden, GatewayError
from hpcgate.gateway import Gateway
from hpcgate.services.machine import Machine
from hpcgate.stores.base import Session

COOKIE_NAME = "newt_sessionid"


class ClientGone(GatewayError):
    """The client disconnected before the answer (nginx's 499); nobody reads this."""

    status_code = 499


T = TypeVar("T")
DISCONNECT_POLL = 0.25


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


async def caller(request: Request) -> Caller:
    """The logged-in caller; 401 in the envelope when there is none.

    A call that changes something on the strength of the session cookie alone must come
    from the gateway's own origin: a browser sends ``Origin`` (or ``Referer``) on
    cross-site requests, so another site cannot act with a user's cookie. Scripts using
    a bearer token, and non-browser clients that send neither header, are unaffected.
    """
    token = request_token(request)
    account, session = await gateway(request).login.account_for(token)
    request.state.audit_user = account.name
    bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
    if request.method not in SAFE_METHODS and not bearer and not same_origin(request):
        raise Forbidden(
            "cross-site request refused: a call that changes something with the session "
            "cookie must come from this gateway's own pages (or use a bearer token)"
        )
    return Caller(account, session)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source is None  # an opaque "null" origin is cross-site
    host = request.headers.get("host", "")
    return urlsplit(source).netloc.lower() == host.lower()


def machine(request: Request, name: str) -> Machine:
    return gateway(request).machine(name)


async def until_disconnected(request: Request, action: Coroutine[Any, Any, T]) -> T:
    """Run ``action``, cancelling it if the client goes away (the runner then kills the
    command's processes, so nothing is left running for nobody)."""
    task = asyncio.ensure_future(action)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone("the client went away; its action was stopped")
