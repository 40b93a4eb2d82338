"""The authentication extension point.

An authenticator checks a username and password and says which Unix account they belong
to. It decides nothing else: sessions, root refusal and the uid floor are enforced by
:mod:`hpcgate.auth.login` for every authenticator alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Authenticator(ABC):
    """Checks credentials. Implementations must not raise on wrong credentials."""

    @abstractmethod
    async def authenticate(self, username: str, password: str) -> str | None:
        """The Unix account name these credentials log in as, or None if they are wrong."""
