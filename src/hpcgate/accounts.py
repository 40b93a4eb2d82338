"""Unix accounts: who a gateway user really is on the machine."""

from __future__ import annotations

import os
import pwd
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
