"""The authentication extension point.

An authenticator checks a username and password and says which Unix account they belong
to. It decides nothing else: sessions, root refusal, the uid floor and throttling are
enforced by :mod:`hpcgate.auth.login` for every authenticator alike. The login service asks
:meth:`Authenticator.unix_account` first and checks the password only of a name whose
account may log in, so the gateway never tells whether root's password is right.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from hpcgate.config import AuthConfig


class Authenticator(ABC):
    """Checks credentials. Implementations must not raise on wrong credentials.

    Registered under the ``hpcgate.authenticators`` entry-point group (see
    :mod:`hpcgate.plugins`) and named by ``auth.backend``.
    """

    @classmethod
    def from_config(cls, config: AuthConfig) -> Authenticator:
        """The authenticator for the ``[auth]`` section; ConfigError for a wrong setting."""
        return cls()

    @abstractmethod
    async def authenticate(self, username: str, password: str) -> str | None:
        """The Unix account name these credentials log in as, or None if they are wrong.

        Blocking work (PAM, hashing) belongs on a pool of its own, sized by
        ``auth.login_threads``, never on the event loop's shared default pool.
        """

    def unix_account(self, username: str) -> str | None:
        """The Unix account ``username`` would log in as, known without the password, or
        None for a name this authenticator does not know. The default: the same name."""
        return username
