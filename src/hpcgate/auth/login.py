"""Logging in and out, the same for every authenticator."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time

from hpcgate.accounts import AccountCache, UnixAccount
from hpcgate.auth.base import Authenticator
from hpcgate.auth.sessions import Session, SessionStore
from hpcgate.config import AuthConfig
from hpcgate.errors import BadRequest, Forbidden, NotLoggedIn, TooManyRequests

log = logging.getLogger(__name__)

_USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,255}$")


class FailureThrottle:
    """Counts failed logins per key (a user, an address) within a sliding window."""

    MAX_KEYS = 10_000

    def __init__(self, window: float) -> None:
        self.window = window
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str) -> list[float]:
        cutoff = time.monotonic() - self.window
        recent = [t for t in self._failures.get(key, []) if t > cutoff]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent

    def retry_after(self, key: str, limit: int) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        recent = self._recent(key)
        if len(recent) < limit:
            return 0.0
        return recent[-limit] + self.window - time.monotonic()

    def fail(self, key: str) -> None:
        if len(self._failures) >= self.MAX_KEYS:  # keys sprayed once are never asked again
            for stale in list(self._failures):
                self._recent(stale)
        self._recent(key)
        self._failures.setdefault(key, []).append(time.monotonic())

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)


class LoginService:
    """Turns credentials into sessions, and tokens back into Unix accounts."""

    def __init__(
        self, authenticator: Authenticator, sessions: SessionStore, config: AuthConfig
    ) -> None:
        self.authenticator = authenticator
        self.sessions = sessions
        self.config = config
        self.service_uid = os.geteuid()
        self.throttle = FailureThrottle(config.lockout_seconds)
        self.accounts = AccountCache(config.account_cache_seconds)

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
        limits = (
            (f"user:{username}", self.config.max_failures_per_user, f"for {username}"),
            (f"address:{client}", self.config.max_failures_per_address, f"from {client}"),
        )
        for key, limit, who in limits:
            wait = self.throttle.retry_after(key, limit)
            if wait > 0:
                log.warning("login for %r from %s refused: locked out", username, client)
                raise TooManyRequests(
                    f"too many failed logins {who}; try again in {math.ceil(wait)} s"
                )
        unix_name = await self.authenticator.authenticate(username, password)
        if unix_name is None:
            for key, _, _ in limits:
                self.throttle.fail(key)
            log.warning("failed login for %r from %s", username, client)
            await asyncio.sleep(self.config.failed_login_delay)
            raise NotLoggedIn("wrong username or password")
        self.throttle.reset(f"user:{username}")
        account = self.accounts.lookup(unix_name, fresh=True)
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
        account = self.accounts.lookup(session.username)
        self._admit(account)
        return account, session

    async def logout(self, token: str | None) -> bool:
        return bool(token) and await self.sessions.delete(token or "")
