"""Login sessions: random tokens, stored only as hashes, that expire."""

from __future__ import annotations

import hashlib
import secrets
import time
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


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """In-process session store. A token is never kept, only its SHA-256."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        """Start a session; returns the token (shown once to the client) and the session."""
        self._purge()
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(username=username, created=now, expires=now + lifetime)
        self._sessions[_digest(token)] = session
        return token, session

    def get(self, token: str) -> Session | None:
        """The live session for ``token``, or None when unknown or expired."""
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= time.time():
            del self._sessions[key]
            return None
        return session

    def delete(self, token: str) -> bool:
        """End the session; True if there was one."""
        return self._sessions.pop(_digest(token), None) is not None

    def _purge(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]
