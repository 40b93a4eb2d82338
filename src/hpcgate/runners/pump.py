"""The one loop every transport runs an action through.

It feeds stdin, drains stdout and stderr against one shared output budget, and waits for
the action's *main* process to exit, never for end-of-file: a daemonised grandchild may
hold the pipes open for ever. However the action ends (its main process exited, its time
ran out, it printed too much, or the caller was cancelled because the client went away),
the pump kills everything the action started and then releases its streams, so nothing of
the action keeps running and the gateway keeps none of its descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from hpcgate.process import Limits, OutputBudget, OutputTooLarge, output_too_large, timed_out

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
AFTER_EXIT = 2.0
"""Seconds to read what is left in the pipes once the action's processes are killed.

With everything killed the pipes reach end-of-file at once; only a process that escaped
containment can hold them open, and then they are closed anyway after this long."""

ExitStatus = TypeVar("ExitStatus")


class ByteReader(Protocol):
    """An asyncio or asyncssh byte stream."""

    async def read(self, n: int = -1) -> bytes: ...


async def pump(
    argv: Sequence[str],
    limits: Limits,
    *,
    stdout: ByteReader,
    stderr: ByteReader,
    feed: Callable[[], Awaitable[None]],
    exited: Callable[[], Awaitable[ExitStatus]],
    kill: Callable[[], Awaitable[None]],
    release: Callable[[], None],
) -> tuple[ExitStatus, bytes, bytes]:
    """Run one action to its end: its main process's exit status, stdout and stderr.

    ``feed`` writes stdin and closes it; ``exited`` returns once the main process has
    exited; ``kill`` kills everything the action started (called exactly once, however the
    action ends); ``release`` closes the streams (called last, always).

    Raises TimedOut past ``limits.timeout`` and BadRequest past ``limits.output_bytes``.
    """
    budget = OutputBudget(limits.output_bytes)
    out, err = bytearray(), bytearray()

    async def drain(stream: ByteReader, into: bytearray) -> None:
        while chunk := await stream.read(READ_CHUNK):
            budget.spend(len(chunk))
            into += chunk

    draining: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(drain(stdout, out)),
        asyncio.ensure_future(drain(stderr, err)),
    ]
    main: asyncio.Future[ExitStatus] = asyncio.ensure_future(exited())
    tasks: list[asyncio.Future[Any]] = [*draining, main, asyncio.ensure_future(feed())]
    killed = False
    try:
        async with asyncio.timeout(limits.timeout):
            watched: set[asyncio.Future[Any]] = {main, *draining}
            while not main.done():
                done, watched = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # OutputTooLarge from a drain ends the action now
            status = main.result()
            # The action is over: what it left running dies with it, and then the pipes
            # hold only what was already printed.
            killed = True
            await kill()
            _, left = await asyncio.wait(draining, timeout=AFTER_EXIT)
            for task in draining:
                if task in left:
                    log.warning("%s: a process outside the action holds its pipes", argv[0])
                else:
                    task.result()
    except TimeoutError:
        raise timed_out(argv, limits) from None
    except OutputTooLarge:
        raise output_too_large(argv, limits) from None
    finally:
        for task in tasks:
            task.cancel()
        # shielded so that a cancelled caller still leaves nothing behind
        await asyncio.shield(_end(tasks, None if killed else kill, release))
    return status, bytes(out), bytes(err)


async def _end(
    tasks: Sequence[asyncio.Future[Any]],
    kill: Callable[[], Awaitable[None]] | None,
    release: Callable[[], None],
) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        if kill is not None:
            await kill()
    finally:
        with contextlib.suppress(Exception):
            release()
