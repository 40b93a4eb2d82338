"""File transfers over SFTP, on the user's own pooled SSH connection.

Each transfer opens an SFTP channel (the login node's ``sftp-server``, running as the
user) on a connection leased from the pool, and holds a session slot while it lasts.
Downloads keep ``READ_REQUESTS`` reads in flight and uploads write ``BLOCK`` bytes while
collecting the next, so a transfer holds at most ~8 MiB and waits for a slow client
(back-pressure) instead of reading ahead without bound. Closing the iterator early
closes the channel.

OpenSSH's SFTP protocol (version 3) reports a full disk or a quota as a generic failure:
a write that fails after the file was opened is reported as 507 with the server's words.
SFTP has no non-blocking open: the file service checks, as the user, that a path is a
regular file before it is read, so only a FIFO swapped in between could block, and then
only until the transfer timeout closes the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import asyncssh

from hpcgate.accounts import UnixAccount
from hpcgate.errors import GatewayError, Unavailable
from hpcgate.files import InsufficientStorage, os_error
from hpcgate.process import Limits, timed_out

BLOCK = 4 * 1024 * 1024
"""Bytes an upload collects before writing them (asyncssh splits them into parallel
requests); one block is written while the next is collected."""
READ_REQUESTS = 32
"""Reads in flight per download (each of the server's largest read, ~255 KiB)."""
T = TypeVar("T")

Lease = Callable[[UnixAccount], AbstractAsyncContextManager[asyncssh.SSHClientConnection]]


def _error(account: UnixAccount, action: str, exc: Exception, *, writing: bool) -> GatewayError:
    if isinstance(exc, asyncssh.SFTPError):
        if writing and exc.code == asyncssh.FX_FAILURE:
            return InsufficientStorage(
                f"{action}: the login node refused to store more ({exc.reason}): the disk "
                "or the quota is probably full; nothing was written"
            )
        reason = {
            asyncssh.FX_NO_SUCH_FILE: "No such file or directory",
            asyncssh.FX_PERMISSION_DENIED: "Permission denied",
        }.get(exc.code, exc.reason)
        return os_error(account.name, action, reason)
    if isinstance(exc, asyncssh.Error | OSError):
        return Unavailable(f"{action}: the SSH connection failed: {exc}")
    raise exc


async def _close(file: asyncssh.SFTPClientFile) -> None:
    """Close a remote file; a channel already gone (the client went away) closed it.

    The close runs in its own task, so that a cancelled transfer still closes the
    handle; its outcome is always retrieved, a lost channel quietly.
    """
    closing = asyncio.ensure_future(file.close())
    closing.add_done_callback(_quietly)
    with contextlib.suppress(asyncssh.Error, OSError):
        await asyncio.shield(closing)


def _quietly(task: asyncio.Future[None]) -> None:
    """Retrieve a finished task's outcome: an SSH error once the channel is gone is
    expected; anything else is raised where the transfer awaited it."""
    if not task.cancelled():
        task.exception()


async def _read_at(file: asyncssh.SFTPClientFile, size: int, offset: int) -> bytes:
    data = await file.read(size, offset)
    assert isinstance(data, bytes)  # opened with encoding=None
    return data


async def _write_at(file: asyncssh.SFTPClientFile, data: bytes, offset: int, piece: int) -> None:
    """Write ``data`` at ``offset`` as parallel requests of at most ``piece`` bytes; all
    of them are collected, whether the write succeeds, fails or is cancelled."""
    writes = {
        asyncio.ensure_future(file.write(data[at : at + piece], offset + at))
        for at in range(0, len(data), piece)
    }
    try:
        for write in asyncio.as_completed(writes):
            await write
    finally:
        for write in writes:
            write.cancel()
        await asyncio.gather(*writes, return_exceptions=True)


async def _settle(tasks: set[asyncio.Task[bytes]]) -> None:
    """Cancel reads still in flight and collect them (a lost channel fails them)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()


async def _within(awaitable: Awaitable[T], deadline: float, argv: str, limits: Limits) -> T:
    left = deadline - time.monotonic()
    try:
        return await asyncio.wait_for(awaitable, max(left, 0.001))
    except TimeoutError:
        raise timed_out([argv], limits) from None


async def sftp_read(
    lease: Lease, account: UnixAccount, path: str, *, offset: int, length: int, limits: Limits
) -> AsyncIterator[bytes]:
    """The bytes ``[offset, offset + length)`` of ``path``, read through SFTP as the user."""
    deadline = time.monotonic() + limits.timeout
    action = f"read {path}"
    try:
        async with lease(account) as connection, connection.start_sftp_client() as sftp:
            # block_size=0: one request per call; the requests in flight are this
            # module's own tasks, all collected however the transfer ends
            opening = sftp.open(path, "rb", encoding=None, block_size=0)
            file = await _within(opening, deadline, "sftp", limits)
            block = sftp.limits.max_read_len or 32768
            in_flight: set[asyncio.Task[bytes]] = set()
            reads: dict[int, asyncio.Task[bytes]] = {}  # by offset, sent in order
            try:
                position, end, next_read = offset, offset + length, offset
                while position < end:
                    while next_read < end and len(reads) < READ_REQUESTS:
                        size = min(block, end - next_read)
                        task = asyncio.ensure_future(_read_at(file, size, next_read))
                        reads[next_read] = task
                        in_flight.add(task)
                        next_read += size
                    task = reads.pop(position)
                    data = await _within(asyncio.shield(task), deadline, "sftp", limits)
                    in_flight.discard(task)
                    if not data:
                        raise GatewayError(f"{action}: the login node sent an incomplete file")
                    wanted = min(block, end - position)
                    if len(data) < wanted:  # a short read: ask again for the rest
                        rest = asyncio.ensure_future(
                            _read_at(file, wanted - len(data), position + len(data))
                        )
                        reads[position + len(data)] = rest
                        in_flight.add(rest)
                    position += len(data)
                    yield data
            finally:
                await _settle(in_flight)
                await _close(file)
    except (asyncssh.Error, OSError) as exc:
        raise _error(account, action, exc, writing=False) from None


async def sftp_write(
    lease: Lease,
    account: UnixAccount,
    path: str,
    chunks: AsyncIterable[bytes],
    *,
    limits: Limits,
) -> int:
    """Create ``path`` exclusively through SFTP as the user and write ``chunks`` to it."""
    deadline = time.monotonic() + limits.timeout
    action = f"write {path}"
    written = 0
    try:
        async with lease(account) as connection, connection.start_sftp_client() as sftp:
            # "x": O_CREAT|O_EXCL, so never an existing file and never through a link
            opening = sftp.open(path, "xb", encoding=None, block_size=0)
            file = await _within(opening, deadline, "sftp", limits)
            piece = sftp.limits.max_write_len or 32768
            in_flight: asyncio.Task[None] | None = None
            try:
                buffer = bytearray()
                async for chunk in chunks:
                    buffer += chunk
                    if len(buffer) >= BLOCK:
                        if in_flight is not None:
                            await _within(in_flight, deadline, "sftp", limits)
                        in_flight = asyncio.ensure_future(
                            _write_at(file, bytes(buffer), written, piece)
                        )
                        written += len(buffer)
                        buffer = bytearray()
                if in_flight is not None:
                    await _within(in_flight, deadline, "sftp", limits)
                    in_flight = None
                if buffer:
                    await _within(
                        _write_at(file, bytes(buffer), written, piece), deadline, "sftp", limits
                    )
                    written += len(buffer)
            finally:
                if in_flight is not None:
                    in_flight.cancel()
                    with contextlib.suppress(asyncio.CancelledError, asyncssh.Error, OSError):
                        await in_flight  # retrieved: a lost channel fails it
                await _close(file)
    except (asyncssh.Error, OSError) as exc:
        raise _error(account, action, exc, writing=True) from None
    return written
