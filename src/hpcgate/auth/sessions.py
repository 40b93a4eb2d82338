"""Login sessions: random tokens, stored only as hashes, that expire."""

from __future__ import annotations

import hashlib
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Session:
    """Who is logged in, and until when (epoch seconds)."""

    username: str
    created: float
    expires: float

    @property
    def remaining(self) -> int:
        return max(0, int(self.expires - time.time()))


def digest(token: str) -> str:
    """What a store keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore(ABC):
    """Where sessions live. A token is never kept, only its SHA-256."""

    @abstractmethod
    async def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        """Start a session; returns the token (shown once to the client) and the session."""

    @abstractmethod
    async def get(self, token: str) -> Session | None:
        """The live session for ``token``, or None when unknown or expired."""

    @abstractmethod
    async def delete(self, token: str) -> bool:
        """End the session; True if there was one."""


def new_session(username: str, lifetime: float) -> tuple[str, str, Session]:
    """A fresh random token, the digest a store keeps, and the session."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    return token, digest(token), Session(username=username, created=now, expires=now + lifetime)


class MemorySessionStore(SessionStore):
    """Sessions inside one gateway process."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    async def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        self._purge()
        token, key, session = new_session(username, lifetime)
        self._sessions[key] = session
        return token, session

    async def get(self, token: str) -> Session | None:
        key = digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= time.time():
            del self._sessions[key]
            return None
        return session

    async def delete(self, token: str) -> bool:
        return self._sessions.pop(digest(token), None) is not None

    def _purge(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]
