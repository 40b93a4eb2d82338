"""Unix accounts: who a gateway user really is on the machine."""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass

from hpcgate.errors import Forbidden


@dataclass(frozen=True)
class UnixAccount:
    """A Unix account that actions run as: its ids, groups, home and shell."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    @classmethod
    def lookup(cls, name: str) -> UnixAccount:
        """The account called ``name``; Forbidden when the system does not know it."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise Forbidden(f"there is no Unix account {name!r} on this gateway") from None
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
            home=entry.pw_dir,
            shell=entry.pw_shell or "/bin/sh",
        )

    def environment(self, path: str) -> dict[str, str]:
        """The clean environment every action of this account starts with."""
        return {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": self.shell,
            "PATH": path,
        }

    def resolve_path(self, path: str) -> str:
        """An absolute path: ``~`` and ``~/x`` expand to the home, relative paths join it."""
        if path == "~":
            return self.home
        if path.startswith("~/"):
            path = path[2:]
        return os.path.normpath(os.path.join(self.home, path))


class AccountCache:
    """Accounts looked up recently, each reused for at most ``max_age`` seconds.

    Resolving a user's groups reads the whole group database, on every request without
    this. A change to a user's groups reaches their actions within ``max_age`` (nscd and
    sssd cache for longer by default); a login always looks the account up afresh.
    """

    def __init__(self, max_age: float = 60.0, max_entries: int = 100_000) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, UnixAccount]] = {}

    def lookup(self, name: str, *, fresh: bool = False) -> UnixAccount:
        """The account called ``name`` (see :meth:`UnixAccount.lookup`)."""
        now = time.monotonic()
        entry = self._entries.get(name)
        if entry is not None and not fresh and now - entry[0] < self.max_age:
            return entry[1]
        account = UnixAccount.lookup(name)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[name] = (now, account)
        return account
