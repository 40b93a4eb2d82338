"""Authentication: pluggable authenticators, sessions, login."""

from hpcgate.auth.base import Authenticator
from hpcgate.auth.login import LoginService
from hpcgate.auth.sessions import MemorySessionStore, Session, SessionStore
from hpcgate.config import AuthConfig


def build_authenticator(config: AuthConfig) -> Authenticator:
    """The authenticator named by ``auth.backend``."""
    if config.backend == "users_file":
        from hpcgate.auth.users_file import UsersFileAuthenticator

        assert config.users_file is not None
        return UsersFileAuthenticator(config.users_file)
    from hpcgate.auth.pam import PamAuthenticator

    return PamAuthenticator(config.pam_service)


__all__ = [
    "Authenticator",
    "LoginService",
    "MemorySessionStore",
    "Session",
    "SessionStore",
    "build_authenticator",
]
