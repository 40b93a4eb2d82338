"""Login sessions: random tokens, stored only as hashes, that expire."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from hpcgate.status.redis_store import RedisStore


@dataclass(frozen=True)
class Session:
    """Who is logged in, and until when (epoch seconds)."""

    username: str
    created: float
    expires: float

    @property
    def remaining(self) -> int:
        return max(0, int(self.expires - time.time()))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """In-process session store. A token is never kept, only its SHA-256."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def _new(self, username: str, lifetime: float) -> tuple[str, str, Session]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        return (
            token,
            _digest(token),
            Session(username=username, created=now, expires=now + lifetime),
        )

    async def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        """Start a session; returns the token (shown once to the client) and the session."""
        self._purge()
        token, key, session = self._new(username, lifetime)
        self._sessions[key] = session
        return token, session

    async def get(self, token: str) -> Session | None:
        """The live session for ``token``, or None when unknown or expired."""
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= time.time():
            del self._sessions[key]
            return None
        return session

    async def delete(self, token: str) -> bool:
        """End the session; True if there was one."""
        return self._sessions.pop(_digest(token), None) is not None

    def _purge(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]


class RedisSessionStore(SessionStore):
    """Sessions shared by every gateway process: ``{prefix}session:{sha256(token)}``.

    A login on one process works on all of them, and a logout ends it everywhere.
    """

    def __init__(self, store: RedisStore) -> None:
        super().__init__()
        self._store = store

    def _key(self, digest: str) -> str:
        return f"{self._store.prefix}session:{digest}"

    async def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        token, digest, session = self._new(username, lifetime)
        value = json.dumps([session.username, session.created, session.expires])
        try:
            await self._store._redis.set(self._key(digest), value, px=int(lifetime * 1000))
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None
        return token, session

    async def get(self, token: str) -> Session | None:
        try:
            raw = await self._store._redis.get(self._key(_digest(token)))
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None
        if raw is None:
            return None
        username, created, expires = json.loads(raw)
        return Session(username, created, expires) if expires > time.time() else None

    async def delete(self, token: str) -> bool:
        try:
            return bool(await self._store._redis.delete(self._key(_digest(token))))
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None
