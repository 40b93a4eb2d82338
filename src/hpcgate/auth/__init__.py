"""Authentication: the Authenticator extension point, its implementations, and login."""

from hpcgate.auth.base import Authenticator
from hpcgate.auth.login import LoginService

__all__ = ["Authenticator", "LoginService"]
