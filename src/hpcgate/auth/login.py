"""Logging in and out, the same for every authenticator."""

from __future__ import annotations

import asyncio
import logging
import os
import re

from hpcgate.accounts import UnixAccount
from hpcgate.auth.base import Authenticator
from hpcgate.auth.sessions import Session, SessionStore
from hpcgate.config import AuthConfig
from hpcgate.errors import BadRequest, Forbidden, NotLoggedIn

log = logging.getLogger(__name__)

_USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,255}$")


class LoginService:
    """Turns credentials into sessions, and tokens back into Unix accounts."""

    def __init__(
        self, authenticator: Authenticator, sessions: SessionStore, config: AuthConfig
    ) -> None:
        self.authenticator = authenticator
        self.sessions = sessions
        self.config = config
        self.service_uid = os.geteuid()

    def _admit(self, account: UnixAccount) -> None:
        if account.uid == 0:
            raise Forbidden("root can never use the gateway; log in as a regular user")
        if account.uid < self.config.min_uid:
            raise Forbidden(
                f"{account.name} is a system account (uid {account.uid} < {self.config.min_uid})"
            )
        if self.service_uid != 0 and account.uid != self.service_uid:
            raise Forbidden(
                f"this gateway runs without root, so it serves only uid {self.service_uid}"
            )

    async def login(
        self, username: str, password: str, client: str
    ) -> tuple[str, Session, UnixAccount]:
        """Check the credentials; returns a new token, its session and the account."""
        if not username or not password:
            raise BadRequest("give username and password")
        if not _USERNAME.match(username) or len(password) > 4096:
            raise BadRequest("username or password is malformed")
        unix_name = await self.authenticator.authenticate(username, password)
        if unix_name is None:
            log.warning("failed login for %r from %s", username, client)
            await asyncio.sleep(self.config.failed_login_delay)
            raise NotLoggedIn("wrong username or password")
        account = UnixAccount.lookup(unix_name)
        try:
            self._admit(account)
        except Forbidden:
            log.warning("refused login for %r (%s) from %s", username, unix_name, client)
            raise
        token, session = await self.sessions.create(account.name, self.config.session_lifetime)
        log.info("login: %s from %s", account.name, client)
        return token, session, account

    async def account_for(self, token: str | None) -> tuple[UnixAccount, Session]:
        """The account behind a token; NotLoggedIn when there is none or it expired."""
        session = await self.sessions.get(token) if token else None
        if session is None:
            raise NotLoggedIn("not logged in: POST /api/auth with username and password first")
        account = UnixAccount.lookup(session.username)
        self._admit(account)
        return account, session

    async def logout(self, token: str | None) -> bool:
        return bool(token) and await self.sessions.delete(token or "")
