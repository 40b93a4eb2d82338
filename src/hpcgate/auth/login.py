"""Logging in and out, the same for every authenticator."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcgate.accounts import AccountCache, UnixAccount
from hpcgate.auth.base import Authenticator
from hpcgate.config import AuthConfig
from hpcgate.contract import USERNAME as _USERNAME
from hpcgate.errors import BadRequest, Forbidden, NotLoggedIn, TooManyRequests
from hpcgate.stores.base import Session, SessionStore

log = logging.getLogger(__name__)

_UNMAPPED_UIDS = frozenset({65534, 2**32 - 1})  # nobody (the kernel's overflow uid), -1
MAX_DOUBLINGS = 6  # a lockout of one name and address grows to at most 64 windows


def _growth(lockouts: int) -> float:
    """How many lockout windows the next lockout lasts: doubling, up to 64."""
    return float(1 << min(lockouts, MAX_DOUBLINGS))


@dataclass
class _Pair:
    """One name's attempts from one address."""

    attempts: list[float] = field(default_factory=list)
    lockouts: int = 0
    locked_until: float = 0.0

    def forgotten(self, now: float, window: float) -> bool:
        """Quiet for as long as its next lockout would last: it starts afresh."""
        last = max([self.locked_until, *self.attempts[-1:]])
        return now - last > window * _growth(self.lockouts)


@dataclass(frozen=True)
class Attempt:
    """A login attempt admitted by the throttle, and counted from its start."""

    username: str
    address: str
    started: float


class LoginThrottle:
    """Limits on failed logins, reserved before the password is checked.

    Every attempt counts from the moment it is admitted, so guesses sent at once cannot
    all pass a check made before any of them failed; a successful login forgives its own
    attempt. Within ``lockout_seconds`` there may be at most:

    - ``max_failures_per_user`` attempts of one name from one address; each further
      lockout of that name and address lasts twice the one before (up to 64 times);
    - ``max_failures_per_address`` attempts from one address, whatever the names;
    - ``max_failures_per_user_total`` attempts of one name from every address, except
      addresses the user logged in from within ``known_address_seconds``; any successful
      login of the user lifts it.

    So an attacker can lock a name out of their own address, not its owner out of theirs.
    The counts live in this process's memory.
    """

    MAX_KEYS = 10_000
    MAX_KNOWN_ADDRESSES = 16

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._addresses: dict[str, list[float]] = {}
        self._users: dict[str, list[float]] = {}
        self._known: dict[str, dict[str, float]] = {}

    def reserve(self, username: str, address: str) -> Attempt:
        """Count an attempt of ``username`` from ``address``; TooManyRequests when a limit
        is reached. Nothing is awaited between the checks and the count."""
        config, now = self.config, self.clock()
        window = config.lockout_seconds
        if len(self._pairs) + len(self._addresses) + len(self._users) > self.MAX_KEYS:
            self._forget_stale(now)
        pair = self._pairs.get((username, address))
        if pair is None or pair.forgotten(now, window):
            pair = self._pairs[username, address] = _Pair()
        waits = [
            (pair.locked_until - now, f"for {username}"),
            (
                self._wait(self._addresses, address, config.max_failures_per_address, now),
                f"from {address}",
            ),
        ]
        if not self._known_address(username, address, now):
            limit = config.max_failures_per_user_total
            waits.append(
                (
                    self._wait(self._users, username, limit, now),
                    f"for {username} from addresses it has not logged in from",
                )
            )
        for wait, who in waits:
            if wait > 0:
                log.warning("login for %r from %s refused: locked out", username, address)
                raise TooManyRequests(
                    f"too many failed logins {who}; try again in {math.ceil(wait)} s"
                )
        pair.attempts = [t for t in pair.attempts if t > now - window] + [now]
        if len(pair.attempts) >= config.max_failures_per_user:
            pair.locked_until = now + window * _growth(pair.lockouts)
            pair.lockouts += 1
            pair.attempts = []
        self._addresses.setdefault(address, []).append(now)
        self._users.setdefault(username, []).append(now)
        return Attempt(username, address, now)

    def succeeded(self, attempt: Attempt) -> None:
        """The attempt logged in: forgive it, lift the name's limits, remember the address."""
        self._pairs.pop((attempt.username, attempt.address), None)
        self._users.pop(attempt.username, None)
        stamps = self._addresses.get(attempt.address, [])
        if attempt.started in stamps:
            stamps.remove(attempt.started)
        known = self._known.setdefault(attempt.username, {})
        known.pop(attempt.address, None)
        known[attempt.address] = self.clock()
        while len(known) > self.MAX_KNOWN_ADDRESSES:
            del known[next(iter(known))]  # the least recently used

    def _known_address(self, username: str, address: str, now: float) -> bool:
        since = self._known.get(username, {}).get(address)
        return since is not None and now - since < self.config.known_address_seconds

    def _wait(self, counts: dict[str, list[float]], key: str, limit: int, now: float) -> float:
        """Seconds until ``key`` has fewer than ``limit`` attempts in the window."""
        recent = [t for t in counts.get(key, []) if t > now - self.config.lockout_seconds]
        if recent:
            counts[key] = recent
        else:
            counts.pop(key, None)
        return recent[-limit] + self.config.lockout_seconds - now if len(recent) >= limit else 0

    def _forget_stale(self, now: float) -> None:
        """Drop keys sprayed once and never asked again."""
        window = self.config.lockout_seconds
        for key, pair in list(self._pairs.items()):
            if pair.forgotten(now, window):
                del self._pairs[key]
        for counts in (self._addresses, self._users):
            for name in list(counts):
                self._wait(counts, name, 1, now)


class LoginService:
    """Turns credentials into sessions, and tokens back into Unix accounts."""

    def __init__(
        self, authenticator: Authenticator, sessions: SessionStore, config: AuthConfig
    ) -> None:
        self.authenticator = authenticator
        self.sessions = sessions
        self.config = config
        self.service_uid = os.geteuid()
        self.throttle = LoginThrottle(config)
        self.accounts = AccountCache(config.account_cache_seconds)
        self._check_times: deque[tuple[float, float]] = deque(maxlen=64)

    def _admit(self, account: UnixAccount) -> None:
        if account.uid == 0:
            raise Forbidden("root can never use the gateway; log in as a regular user")
        if account.uid < self.config.min_uid or account.uid in _UNMAPPED_UIDS:
            raise Forbidden(
                f"{account.name} is a system account (uid {account.uid}; users start at "
                f"{self.config.min_uid})"
            )
        if self.service_uid != 0 and account.uid != self.service_uid:
            raise Forbidden(
                f"this gateway runs without root, so it serves only uid {self.service_uid}"
            )

    def _admissible(self, unix_name: str | None) -> UnixAccount | None:
        """The account called ``unix_name`` if it may log in, else None (and why, logged)."""
        if unix_name is None:
            return None
        try:
            account = self.accounts.lookup(unix_name, fresh=True)
            self._admit(account)
        except Forbidden as refusal:
            log.warning("login as %s refused: %s", unix_name, refusal.message)
            return None
        return account

    async def _check(self, username: str, password: str) -> str | None:
        started = time.monotonic()
        try:
            return await self.authenticator.authenticate(username, password)
        finally:
            finished = time.monotonic()
            self._check_times.append((finished, finished - started))

    def _failure_deadline(self, started: float) -> float:
        """When a failed attempt that started at ``started`` is answered: the same for every
        failure, ``failed_login_delay`` or, if longer, the slowest password check of the
        last minute (so a slow check, queued or not, tells nothing either)."""
        now = time.monotonic()
        recent = [took for finished, took in self._check_times if now - finished < 60]
        return started + max([self.config.failed_login_delay, *recent])

    async def login(
        self, username: str, password: str, client: str
    ) -> tuple[str, Session, UnixAccount]:
        """Check the credentials; returns a new token, its session and the account.

        Every refusal (unknown name, root or a system account, wrong password) is the same
        401, answered at the same time after the start; the password of a name that may
        not log in is never checked at all.
        """
        started = time.monotonic()
        if not username or not password:
            raise BadRequest("give username and password")
        if not _USERNAME.match(username) or len(password) > 4096:
            raise BadRequest("username or password is malformed")
        attempt = self.throttle.reserve(username, client)
        account = self._admissible(self.authenticator.unix_account(username))
        if account is not None:
            unix_name = await self._check(username, password)
            if unix_name != account.name:  # wrong, or the users file changed meanwhile
                account = self._admissible(unix_name)
        if account is None:
            log.warning("failed login for %r from %s", username, client)
            await asyncio.sleep(max(0.0, self._failure_deadline(started) - time.monotonic()))
            raise NotLoggedIn("wrong username or password")
        self.throttle.succeeded(attempt)
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
