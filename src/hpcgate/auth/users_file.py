"""Authenticate against a TOML file of argon2 password hashes (single-user and dev setups).

The file looks like::

    [users.alice]
    password_hash = "$argon2id$v=19$m=65536,t=3,p=4$..."   # hpcgate hash-password
    unix_account = "alice"                                 # optional, defaults to the name

It is re-read when it changes, so accounts can be added without a restart.
"""

from __future__ import annotations

import asyncio
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hpcgate.auth.base import Authenticator
from hpcgate.config import AuthConfig, ConfigError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash for a users file."""
    return _hasher.hash(password)


@dataclass(frozen=True)
class _Entry:
    password_hash: str
    unix_account: str


class UsersFileAuthenticator(Authenticator):
    """Users and argon2 hashes from a TOML file, each mapped to a Unix account."""

    def __init__(self, path: Path, threads: int = 4) -> None:
        self.path = path
        # argon2 takes 64 MiB and tens of ms per check: a bounded pool of its own.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hpcgate-argon2")
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, _Entry] = {}
        self._dummy_hash = _hasher.hash("an equaliser for unknown names")
        self._load()

    @classmethod
    def from_config(cls, config: AuthConfig) -> UsersFileAuthenticator:
        if config.users_file is None:
            raise ConfigError("auth.backend = 'users_file' needs auth.users_file = '<path>'")
        return cls(config.users_file, config.login_threads)

    def _load(self) -> None:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        data = tomllib.loads(self.path.read_text())
        users: dict[str, _Entry] = {}
        for name, entry in data.get("users", {}).items():
            if not isinstance(entry, dict) or "password_hash" not in entry:
                raise ValueError(f"{self.path}: users.{name} needs a password_hash")
            users[name] = _Entry(entry["password_hash"], entry.get("unix_account", name))
        self._users, self._stamp = users, stamp

    def _check(self, username: str, password: str) -> str | None:
        self._load()
        entry = self._users.get(username)
        try:
            # Unknown names cost the same as wrong passwords, so timing tells nothing.
            _hasher.verify(entry.password_hash if entry else self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return entry.unix_account if entry else None

    async def authenticate(self, username: str, password: str) -> str | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._check, username, password)

    def unix_account(self, username: str) -> str | None:
        """The account the file maps ``username`` to; None for a name it does not list."""
        self._load()
        entry = self._users.get(username)
        return entry.unix_account if entry else None
