"""Pooled SSH connections to login nodes: one per (user, login host), shared, reaped.

Connections are shared by a user's concurrent requests as channels (at most
``max_sessions`` at once, OpenSSH's MaxSessions), closed after ``idle_timeout``, capped at
``max_connections``, kept alive with keepalives, and replaced transparently once when found
dead before a command starts. :meth:`ConnectionPool.close` ends them all, at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from hpcgate import metrics
from hpcgate.errors import Unavailable
from hpcgate.runners.ssh.authority import CertificateAuthority

PREFERRED_CIPHERS = [
    # AES-GCM first: asyncssh seals a packet in one call through OpenSSL, twice as fast
    # as its ChaCha20-Poly1305 here (file transfers: bench/README.md, "files")
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]


@dataclass(frozen=True)
class LoginHost:
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> LoginHost:
        host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
        return cls(host or text, int(port) if port else 22)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class _Pooled:
    connection: asyncssh.SSHClientConnection
    sessions: asyncio.Semaphore
    certificate_expires: float
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class PoolSettings:
    known_hosts: Path
    idle_timeout: float = 300.0
    max_connections: int = 100
    max_sessions: int = 10
    keepalive_interval: float = 15.0
    connect_timeout: float = 10.0


class ConnectionPool:
    """One SSH connection per (user, login host), shared, reaped when idle."""

    def __init__(self, authority: CertificateAuthority, settings: PoolSettings) -> None:
        self.authority = authority
        self.settings = settings
        self._pooled: dict[tuple[str, LoginHost], _Pooled] = {}
        self._connecting: dict[tuple[str, LoginHost], asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._opened: set[asyncssh.SSHClientConnection] = set()

    def __len__(self) -> int:
        return len(self._pooled)

    async def _open(self, user: str, host: LoginHost) -> _Pooled:
        key, certificate = self.authority.credentials(user)
        try:
            connection = await asyncio.wait_for(
                asyncssh.connect(
                    host.host,
                    host.port,
                    username=user,
                    client_keys=[(key, certificate)],
                    known_hosts=str(self.settings.known_hosts),
                    agent_path=None,
                    password=None,
                    kbdint_auth=False,
                    keepalive_interval=self.settings.keepalive_interval,
                    keepalive_count_max=3,
                    config=None,
                    encryption_algs=PREFERRED_CIPHERS,
                ),
                timeout=self.settings.connect_timeout,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostFailed(
                f"its host key does not match {self.settings.known_hosts} ({exc.reason}); refused"
            ) from None
        except asyncssh.PermissionDenied:
            raise HostFailed(
                f"it refused the gateway's certificate for {user} (does sshd trust the CA "
                "with TrustedUserCAKeys, and may this user log in?)"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            raise HostFailed(f"cannot connect: {reason}") from None
        expires = time.time() + self.authority.validity / 3
        return _Pooled(connection, asyncio.Semaphore(self.settings.max_sessions), expires)

    def _usable(self, pooled: _Pooled) -> bool:
        return not pooled.connection.is_closed() and time.time() < pooled.certificate_expires

    async def _get(self, user: str, host: LoginHost) -> _Pooled:
        slot = (user, host)
        pooled = self._pooled.get(slot)
        if pooled is not None and self._usable(pooled):
            return pooled
        lock = self._connecting.setdefault(slot, asyncio.Lock())
        async with lock:  # concurrent first requests of one user open one connection
            pooled = self._pooled.get(slot)
            if pooled is not None and self._usable(pooled):
                return pooled
            if pooled is not None:
                self._retire(slot)
            self._make_room()
            pooled = await self._open(user, host)
            self._opened = {c for c in self._opened if not c.is_closed()}
            self._opened.add(pooled.connection)
            self._pooled[slot] = pooled
            metrics.ssh_connection_opened(str(host))
            self._start_reaper()
            return pooled

    def _retire(self, slot: tuple[str, LoginHost]) -> None:
        pooled = self._pooled.pop(slot, None)
        metrics.SSH_CONNECTIONS_OPEN.labels(str(slot[1])).dec(pooled is not None)
        if pooled is not None and pooled.in_use == 0:
            pooled.connection.close()
        # a connection still carrying channels closes when its last one ends (see lease)

    def _make_room(self) -> None:
        if len(self._pooled) < self.settings.max_connections:
            return
        idle = [(p.last_used, slot) for slot, p in self._pooled.items() if p.in_use == 0]
        if not idle:
            raise Unavailable(
                f"the gateway has {len(self._pooled)} SSH connections open, all busy; "
                "try again shortly"
            )
        self._retire(min(idle)[1])

    @contextlib.asynccontextmanager
    async def lease(
        self, user: str, host: LoginHost, *, fresh: bool = False
    ) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """A pooled connection for ``user`` to ``host`` with one session slot held."""
        if fresh:
            self._retire((user, host))
        pooled = await self._get(user, host)
        async with pooled.sessions:
            pooled.in_use += 1
            try:
                yield pooled.connection
            finally:
                pooled.in_use -= 1
                pooled.last_used = time.monotonic()
                if pooled.in_use == 0 and self.settings.idle_timeout == 0:
                    self._retire((user, host))  # no reuse: a connection per request
                elif pooled.in_use == 0 and self._pooled.get((user, host)) is not pooled:
                    pooled.connection.close()  # retired while in use

    def discard(self, user: str, host: LoginHost) -> None:
        """Drop a connection found dead."""
        self._retire((user, host))

    def _start_reaper(self) -> None:
        if self.settings.idle_timeout == 0:
            return
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while self._pooled:
            await asyncio.sleep(min(self.settings.idle_timeout / 2, 30.0))
            now = time.monotonic()
            for slot, pooled in list(self._pooled.items()):
                idle = pooled.in_use == 0 and now - pooled.last_used > self.settings.idle_timeout
                if idle or pooled.connection.is_closed():
                    self._retire(slot)

    async def close(self) -> None:
        """Close every connection, busy or not, and stop the reaper; safe to call twice.

        A pool used again afterwards opens new connections."""
        for slot in list(self._pooled):
            self._retire(slot)
        connections = list(self._opened)
        for connection in connections:
            connection.close()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for connection in connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.wait_closed(), timeout=5)
        self._opened.clear()


class HostFailed(Exception):
    """A login host could not be used; the message says why."""
