"""The FILE module's rules: list, read, write and change files on a machine, as the user.

Every path is opened by the machine as the user: metadata through small programs the
runner starts as the user (``find -printf`` with NUL-separated fields, ``mkdir``, ``mv``,
``chmod``, ``ln``, ``rm``, ``sha256sum``), bytes through the transport's streams
(:meth:`hpcgate.runners.base.Runner.read_bytes` and ``write_bytes``). The service itself
never touches a user's path, not even to check it: it reads what the user's own
processes say, and maps the operating system's refusals to HTTP statuses.

An upload is written to a new temporary file beside its target (created exclusively, so
never through a planted link) and renamed into place only when complete and verified: a
reader never sees half a file, and an upload that fails or is cut off is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import posixpath
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from hpcgate.accounts import UnixAccount
from hpcgate.errors import BadRequest, GatewayError, NotFound
from hpcgate.files import (
    ENTRY_TYPES,
    FileEntry,
    PayloadTooLarge,
    PreconditionFailed,
    check_path,
    iso_date,
    os_error,
)
from hpcgate.process import Completed, Limits
from hpcgate.runners.base import Runner

# type (own), type (followed), perms, links, user, group, size, mtime, link target, name
_FIELDS = "%y\\0%Y\\0%M\\0%n\\0%u\\0%g\\0%s\\0%T@\\0%l\\0%f\\0"
_WIDTH = 10
_SHA256 = re.compile(r"\\?([0-9a-f]{64})\b")
_OCTAL_MODE = re.compile(r"[0-7]{3,4}\Z")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}\Z")


@dataclass(frozen=True)
class FileLimits:
    """What file operations on one machine are held to."""

    command: Limits
    """Quick metadata operations (stat, mkdir, chmod...)."""
    transfer: Limits
    """Transfers, checksums, copies, recursive removals and listings (output cap: a listing)."""
    max_upload_bytes: int
    page_size: int


def _entries(done: Completed) -> list[FileEntry]:
    """The entries ``find -printf _FIELDS`` printed (names may hold newlines, never NUL)."""
    cells = done.stdout.split("\0")
    cells.pop()  # after the last terminator
    entries = []
    for start in range(0, len(cells) - _WIDTH + 1, _WIDTH):
        own, followed, perms, links, user, group, size, mtime, target, name = cells[
            start : start + _WIDTH
        ]
        kind = ENTRY_TYPES.get(own, "other")
        epoch = float(mtime) if mtime else 0.0
        entries.append(
            FileEntry(
                name=name,
                type=kind,
                perms=perms,
                hardlinks=int(links or 0),
                user=user,
                group=group,
                size=int(size or 0),
                date=iso_date(epoch),
                symlink=target if own == "l" else "",
                target_type=ENTRY_TYPES.get(followed, "other") if followed not in "NL?" else "",
                mtime=epoch,
            )
        )
    return entries


class FileService:
    """Files on one machine, always opened as the user by the machine itself."""

    def __init__(self, machine: str, runner: Runner, limits: FileLimits) -> None:
        self.machine = machine
        self.runner = runner
        self.limits = limits

    async def _run(
        self, account: UnixAccount, argv: list[str], *, limits: Limits | None = None
    ) -> Completed:
        return await self.runner.run(account, argv, limits=limits or self.limits.command)

    async def _checked(
        self, account: UnixAccount, argv: list[str], action: str, *, limits: Limits | None = None
    ) -> Completed:
        done = await self._run(account, argv, limits=limits)
        if not done.ok:
            raise os_error(account.name, action, _reason(done))
        return done

    # reading metadata

    async def entry(self, account: UnixAccount, path: str, *, follow: bool = False) -> FileEntry:
        """The path's own entry (a link is a link), or, with ``follow``, what it leads to."""
        check_path(path)
        argv = ["find", "-H" if follow else "-P", path, "-maxdepth", "0", "-printf", _FIELDS]
        done = await self._checked(account, argv, f"read {path}")
        entries = _entries(done)
        if not entries:
            raise NotFound(f"{path}: no such file or directory")
        return entries[0]

    async def is_directory(self, account: UnixAccount, path: str) -> tuple[bool, FileEntry]:
        """Whether ``path`` is (or leads to) a directory, and its own entry."""
        own = await self.entry(account, path)
        return own.type == "dir" or own.target_type == "dir", own

    async def listing(
        self, account: UnixAccount, path: str, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[FileEntry], int]:
        """One page of the directory's entries sorted by name, and how many there are.

        Only the first ``offset + limit`` names are kept while the listing is read.
        """
        check_path(path)
        limit = min(limit or self.limits.page_size, self.limits.page_size)
        argv = ["find", "-H", path, "-mindepth", "1", "-maxdepth", "1", "-printf", _FIELDS]
        done = await self._run(account, argv, limits=self.limits.transfer)
        if not done.ok and not done.stdout:
            raise os_error(account.name, f"list {path}", _reason(done))
        entries = _entries(done)
        page = heapq.nsmallest(offset + limit, entries, key=lambda entry: entry.name)
        return page[offset:], len(entries)

    async def regular_file(self, account: UnixAccount, path: str) -> FileEntry:
        """What ``path`` leads to, which must be a regular file (a FIFO or a device could
        block a reader for ever, or never end)."""
        entry = await self.entry(account, path, follow=True)
        if entry.type == "dir":
            raise BadRequest(f"{path} is a directory, not a file; list it without a view")
        if entry.type != "file":
            raise BadRequest(f"{path} is not a regular file (a FIFO, device or socket); refused")
        return entry

    # reading bytes

    def read(
        self, account: UnixAccount, path: str, *, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        """The bytes ``[offset, offset + length)`` of a regular file, streamed."""
        return self.runner.read_bytes(
            account, path, offset=offset, length=length, limits=self.limits.transfer
        )

    async def head(self, account: UnixAccount, path: str, lines: int, *, tail: bool) -> str:
        """The first (or last) ``lines`` lines of a text file."""
        await self.regular_file(account, path)
        program = "tail" if tail else "head"
        done = await self._checked(account, [program, "-n", str(lines), "--", path], f"read {path}")
        return done.stdout

    async def checksum(self, account: UnixAccount, path: str) -> str:
        """The file's SHA-256 (hex), computed on the machine."""
        await self.regular_file(account, path)
        done = await self._checked(
            account, ["sha256sum", "--", path], f"read {path}", limits=self.limits.transfer
        )
        found = _SHA256.match(done.stdout)
        if found is None:
            raise GatewayError(f"sha256sum printed no checksum for {path}")
        return found.group(1)

    # writing

    async def upload(
        self,
        account: UnixAccount,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        overwrite: bool = True,
        sha256: str | None = None,
    ) -> int:
        """Stream ``chunks`` into ``path``: a temporary file beside it, renamed into place
        once complete (and matching ``sha256``); returns the size. Nothing is left behind
        when anything fails, the client goes away included."""
        check_path(path)
        if sha256 is not None and not _SHA256_HEX.match(sha256):
            raise BadRequest("X-Checksum-Sha256 must be 64 hexadecimal digits")
        directory, name = posixpath.split(path.rstrip("/"))
        if not name or name in (".", ".."):
            raise BadRequest(f"{path} names no file to write")
        try:
            directory_entry = await self.entry(account, directory or "/", follow=True)
        except NotFound:
            raise NotFound(
                f"cannot write {path}: the directory {directory} does not exist"
            ) from None
        if directory_entry.type != "dir":
            raise BadRequest(f"cannot write {path}: {directory} is not a directory")
        existing = await self._existing(account, path)
        if existing is not None and (existing.type == "dir" or existing.target_type == "dir"):
            raise BadRequest(f"{path} is a directory; give the path of a file")
        if existing is not None and not overwrite:
            raise PreconditionFailed(f"{path} exists and If-None-Match: * forbids replacing it")
        short = name.encode()[:200].decode(errors="ignore")  # NAME_MAX is 255 bytes
        temporary = posixpath.join(directory, f".{short}.hpcgate-{secrets.token_hex(6)}.part")
        counted = _Counted(chunks, self.limits.max_upload_bytes, hashed=sha256 is not None)
        try:
            written = await self.runner.write_bytes(
                account, temporary, counted, limits=self.limits.transfer
            )
            if written != counted.size:
                raise GatewayError(f"wrote {written} of {counted.size} bytes of {path}")
            if sha256 is not None and counted.hexdigest() != sha256.lower():
                raise BadRequest(
                    f"the upload's SHA-256 is {counted.hexdigest()}, not the {sha256.lower()} "
                    "of X-Checksum-Sha256; nothing was written"
                )
            if overwrite:
                await self._checked(account, ["mv", "-T", "--", temporary, path], f"write {path}")
            else:
                done = await self._run(account, ["ln", "-T", "--", temporary, path])
                if not done.ok:
                    if "File exists" in done.stderr:
                        raise PreconditionFailed(
                            f"{path} exists and If-None-Match: * forbids replacing it"
                        )
                    raise os_error(account.name, f"write {path}", _reason(done))
                await self._run(account, ["rm", "-f", "--", temporary])
        except BaseException:
            await asyncio.shield(self._remove_quietly(account, temporary))
            raise
        return counted.size

    async def _existing(self, account: UnixAccount, path: str) -> FileEntry | None:
        try:
            return await self.entry(account, path)
        except NotFound:
            return None

    async def _remove_quietly(self, account: UnixAccount, path: str) -> None:
        with contextlib.suppress(GatewayError):
            await self._run(account, ["rm", "-f", "--", path])

    async def mkdir(self, account: UnixAccount, path: str, *, parents: bool = False) -> None:
        check_path(path)
        argv = ["mkdir", *(["-p"] if parents else []), "--", path]
        await self._checked(account, argv, f"make the directory {path}")

    async def move(self, account: UnixAccount, path: str, destination: str) -> None:
        check_path(path)
        check_path(destination, what="destination")
        await self._checked(
            account,
            ["mv", "--", path, destination],
            f"move {path} to {destination}",
            limits=self.limits.transfer,
        )

    async def copy(self, account: UnixAccount, path: str, destination: str) -> None:
        check_path(path)
        check_path(destination, what="destination")
        await self._checked(
            account,
            ["cp", "-R", "--", path, destination],
            f"copy {path} to {destination}",
            limits=self.limits.transfer,
        )

    async def chmod(self, account: UnixAccount, path: str, mode: str) -> None:
        check_path(path)
        if not _OCTAL_MODE.match(mode):
            raise BadRequest(f"mode must be octal digits such as 644 or 0750, not {mode[:20]!r}")
        await self._checked(account, ["chmod", mode, "--", path], f"change the mode of {path}")

    async def symlink(self, account: UnixAccount, path: str, target: str) -> None:
        check_path(path)
        if "\0" in target or not target or len(target.encode()) > 4096:
            raise BadRequest("target must be a non-empty path without NUL characters")
        await self._checked(account, ["ln", "-s", "--", target, path], f"make the link {path}")

    async def remove(self, account: UnixAccount, path: str, *, recursive: bool = False) -> None:
        check_path(path)
        if posixpath.normpath(path) == "/":
            raise BadRequest("refusing to remove /")
        if recursive:
            argv = ["rm", "-r", "-f", "--", path]
            await self.entry(account, path)  # -f would hide a missing path
        else:
            argv = ["rm", "--", path]
        done = await self._run(account, argv, limits=self.limits.transfer)
        if not done.ok:
            reason = _reason(done)
            if "Is a directory" in reason:
                raise BadRequest(f"{path} is a directory; remove it with recursive=true")
            raise os_error(account.name, f"remove {path}", reason)


class _Counted:
    """An upload's chunks, counted (and hashed) as they pass, refused past the limit."""

    def __init__(self, chunks: AsyncIterable[bytes], limit: int, *, hashed: bool) -> None:
        self._chunks = chunks
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256() if hashed else None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self.limit:
                raise PayloadTooLarge(
                    f"the upload is larger than {self.limit} bytes, the most this machine "
                    "accepts (limits.max_upload_bytes)"
                )
            if self._hash is not None:
                self._hash.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else ""


def _reason(done: Completed) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"
