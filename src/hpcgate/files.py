"""Files on a machine, as the user: neutral types, path checks and the OS's answers.

Shared by the transports (:mod:`hpcgate.runners`), which move the bytes, and the file
service (:mod:`hpcgate.services.files`), which decides what a request may do. Nothing here
opens a path: every path is opened by a process, or an SFTP server, running as the user,
so permissions, symlinks and races are the operating system's to decide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from hpcgate.errors import BadRequest, Conflict, Forbidden, GatewayError, NotFound

MAX_PATH_BYTES = 4096  # PATH_MAX
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InsufficientStorage(GatewayError):
    """The machine's disk or the user's quota is full (507); nothing was left behind."""

    status_code = 507


class PreconditionFailed(GatewayError):
    """``If-None-Match: *`` and the target exists (412)."""

    status_code = 412


class RangeNotSatisfiable(GatewayError):
    """A ``Range`` that starts past the end of the file (416)."""

    status_code = 416


class PayloadTooLarge(GatewayError):
    """An upload larger than the machine accepts (413)."""

    status_code = 413


ENTRY_TYPES = {"f": "file", "d": "dir", "l": "link"}


@dataclass(frozen=True)
class FileEntry:
    """One directory entry with NEWT's field names (``type`` is file, dir, link or other)."""

    name: str
    type: str
    perms: str
    hardlinks: int
    user: str
    group: str
    size: int
    date: str
    symlink: str
    target_type: str = ""
    """What a link points to (file, dir, other; '' when dangling or not a link)."""
    mtime: float = 0.0

    def public(self) -> dict[str, object]:
        """The entry as the API answers it."""
        return {
            "name": self.name,
            "type": self.type,
            "perms": self.perms,
            "hardlinks": self.hardlinks,
            "user": self.user,
            "group": self.group,
            "size": self.size,
            "date": self.date,
            "symlink": self.symlink,
        }


def iso_date(epoch: float) -> str:
    """An mtime as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_path(path: str, *, what: str = "the path") -> str:
    """``path`` if it is a sane absolute path: no NUL or control characters, not too long.

    ``..`` and symlinks are left to the operating system: the process that opens the path
    runs as the user, and resolves it as the kernel does.
    """
    if _CONTROL.search(path):
        raise BadRequest(f"{what} must not contain NUL or control characters")
    if not path.startswith("/"):
        raise BadRequest(f"{what} must be absolute (or start with ~): {path[:200]!r}")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise BadRequest(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    return path


_NOT_FOUND = ("No such file or directory", "does not exist", "no such file")
_DENIED = ("Permission denied", "Operation not permitted", "Read-only file system")
_FULL = ("No space left on device", "Disk quota exceeded", "quota exceeded", "File too large")
_WRONG_KIND = ("Is a directory", "Not a directory", "Directory not empty", "not a regular")


def os_error(account_name: str, action: str, reason: str) -> GatewayError:
    """The error for an operation the machine refused, from the OS's own ``reason``."""
    reason = " ".join(reason.split())[:500] or "failed"
    message = f"{action}: {reason}"
    if any(text in reason for text in _FULL):
        return InsufficientStorage(f"{message} (nothing was written)")
    if any(text in reason for text in _DENIED):
        return Forbidden(f"{account_name} may not {message}")
    if any(text.lower() in reason.lower() for text in _NOT_FOUND):
        return NotFound(message)
    if "File exists" in reason:
        return Conflict(message)
    if any(text in reason for text in _WRONG_KIND):
        return BadRequest(message)
    return BadRequest(message)
