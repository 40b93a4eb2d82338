"""The SSH transport: actions run on a machine's login nodes, as the user, over SSH.

The gateway holds no password or private key of any user. It holds an SSH certificate
authority key; for each user it generates a key pair in memory and signs a short-lived
certificate for it (principal = the user's name, no forwarding), which login nodes trust
through ``TrustedUserCAKeys``. Host keys are always checked against a known_hosts file.

Connections are pooled, one per (user, login host), shared by that user's concurrent
requests as channels (at most ``max_sessions`` at once, OpenSSH's MaxSessions), closed
after ``idle_timeout``, capped at ``max_connections``, kept alive with keepalives, and
replaced transparently once when found dead before a command starts.

Remote commands must be run by a POSIX shell (sh, bash, zsh, ksh, ...): argument vectors
are quoted with :func:`shlex.join`, and every command first prints its shell's PID on
stderr. sshd starts each session as a new process group led by that shell, so on a
timeout, an output cap or a client that went away, ``kill -KILL -- -PID`` over a second
channel ends everything the command started on the login node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from hpcgate.accounts import UnixAccount
from hpcgate.config import SshConfig
from hpcgate.errors import Forbidden, Unavailable
from hpcgate.runners.base import (
    Completed,
    Limits,
    OutputBudget,
    OutputTooLarge,
    Runner,
    output_too_large,
    timed_out,
)

log = logging.getLogger(__name__)

_PGID_MARKER = "hpcgate-pgid:"
_PGID_LINE = re.compile(rb"^hpcgate-pgid:(\d+)\n")
_READ_CHUNK = 64 * 1024


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


class CertificateAuthority:
    """Mints short-lived user certificates from the gateway's CA key; keeps them in memory."""

    def __init__(self, ca_key: asyncssh.SSHKey, validity: float) -> None:
        self.ca_key = ca_key
        self.validity = validity
        self._issued: dict[str, tuple[asyncssh.SSHKey, asyncssh.SSHCertificate, float]] = {}

    @classmethod
    def from_file(cls, path: Path, validity: float) -> CertificateAuthority:
        return cls(asyncssh.read_private_key(str(path)), validity)

    def credentials(self, user: str) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        """A key and a certificate for ``user``, renewed once a third of its life is left."""
        issued = self._issued.get(user)
        now = time.time()
        if issued is None or issued[2] - now < self.validity / 3:
            key = asyncssh.generate_private_key("ssh-ed25519")
            certificate = self.ca_key.generate_user_certificate(
                key,
                f"hpcgate:{user}:{int(now)}",
                principals=[user],
                valid_after=int(now) - 60,  # tolerate small clock skew
                valid_before=int(now + self.validity),
                permit_x11_forwarding=False,
                permit_agent_forwarding=False,
                permit_port_forwarding=False,
                permit_pty=False,
                permit_user_rc=False,
                touch_required=False,
            )
            issued = (key, certificate, now + self.validity)
            self._issued[user] = issued
            log.info("issued a %ds certificate for %s", self.validity, user)
        return issued[0], issued[1]


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
                ),
                timeout=self.settings.connect_timeout,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise _HostFailed(
                f"its host key does not match {self.settings.known_hosts} ({exc.reason}); refused"
            ) from None
        except asyncssh.PermissionDenied:
            raise _HostFailed(
                f"it refused the gateway's certificate for {user} (does sshd trust the CA "
                "with TrustedUserCAKeys, and may this user log in?)"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            raise _HostFailed(f"cannot connect: {reason}") from None
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
            self._pooled[slot] = pooled
            self._start_reaper()
            return pooled

    def _retire(self, slot: tuple[str, LoginHost]) -> None:
        pooled = self._pooled.pop(slot, None)
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
        for slot in list(self._pooled):
            self._retire(slot)
        if self._reaper is not None:
            self._reaper.cancel()


class _HostFailed(Exception):
    """A login host could not be used; the message says why."""


class SshRunner(Runner):
    """Runs actions on one of a machine's login nodes, as the user, over pooled SSH."""

    def __init__(
        self,
        machine: str,
        hosts: Sequence[LoginHost],
        pool: ConnectionPool,
        *,
        path: str | None = None,
        environment: Mapping[str, str] | None = None,
        host_retry_after: float = 30.0,
    ) -> None:
        if not hosts:
            raise ValueError(f"machine {machine}: an ssh runner needs at least one login host")
        self.machine = machine
        self.hosts = list(hosts)
        self.pool = pool
        self.host_retry_after = host_retry_after
        self._environment = dict(environment or {})
        if path is not None:
            self._environment["PATH"] = path
        self._down: dict[LoginHost, tuple[float, str]] = {}
        """Login hosts that failed: until when they are skipped, and why."""

    def shell_argv(self, account: UnixAccount, command_line: str) -> list[str]:
        return [account.shell, "-c", command_line]

    def _command(self, argv: Sequence[str], cwd: str | None) -> str:
        words = list(argv)
        if self._environment:
            words = ["env", *(f"{k}={v}" for k, v in self._environment.items()), *words]
        command = f"exec {shlex.join(words)}"
        if cwd is not None:
            command = f"cd -- {shlex.quote(cwd)} && {command}"
        return command

    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        return await self._execute(account, self._command(argv, cwd), tuple(argv), limits, stdin)

    async def run_command_line(
        self, account: UnixAccount, command_line: str, *, limits: Limits
    ) -> Completed:
        # sshd runs the line with the user's own login shell on the login node
        return await self._execute(account, command_line, (account.shell,), limits, None)

    def _candidates(self) -> list[LoginHost]:
        now = time.monotonic()
        up = [h for h in self.hosts if self._down.get(h, (0.0, ""))[0] <= now]
        return up or list(self.hosts)  # all marked down: try them all again

    async def _execute(
        self,
        account: UnixAccount,
        command: str,
        argv: tuple[str, ...],
        limits: Limits,
        stdin: bytes | None,
    ) -> Completed:
        if account.uid == 0:
            raise Forbidden("actions never run as root")
        candidates = self._candidates()
        for host in candidates:
            try:
                return await self._on_host(account, host, command, argv, limits, stdin)
            except _HostFailed as exc:
                self._down[host] = (time.monotonic() + self.host_retry_after, str(exc))
                log.warning("login node %s of %s: %s", host, self.machine, exc)
        reasons = [
            f"{host}: {self._down[host][1]}" + ("" if host in candidates else " (recently)")
            for host in self.hosts
            if host in self._down
        ]
        raise Unavailable(f"no login node of {self.machine} can be used: {'; '.join(reasons)}")

    async def _on_host(
        self,
        account: UnixAccount,
        host: LoginHost,
        command: str,
        argv: tuple[str, ...],
        limits: Limits,
        stdin: bytes | None,
    ) -> Completed:
        marked = f"printf '{_PGID_MARKER}%s\\n' \"$$\" >&2; {command}"
        for attempt in (1, 2):
            async with self.pool.lease(account.name, host) as connection:
                try:
                    process = await connection.create_process(marked, encoding=None)
                except (asyncssh.ChannelOpenError, asyncssh.ConnectionLost, OSError) as exc:
                    # dead before the command started: safe to replace the connection once
                    self.pool.discard(account.name, host)
                    if attempt == 2:
                        raise _HostFailed(f"connection lost: {exc}") from None
                    continue
                self._down.pop(host, None)
                return await self._finish(connection, process, argv, limits, stdin)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _finish(
        self,
        connection: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        argv: tuple[str, ...],
        limits: Limits,
        stdin: bytes | None,
    ) -> Completed:
        out, err = bytearray(), bytearray()
        budget = OutputBudget(limits.output_bytes)

        async def drain(stream: asyncssh.SSHReader[bytes], into: bytearray) -> None:
            while chunk := await stream.read(_READ_CHUNK):
                into += chunk
                budget.spend(len(chunk))

        async def feed() -> None:
            if stdin:
                process.stdin.write(stdin)
            process.stdin.write_eof()

        tasks = [
            asyncio.ensure_future(feed()),
            asyncio.ensure_future(drain(process.stdout, out)),
            asyncio.ensure_future(drain(process.stderr, err)),
        ]

        async def pump() -> None:
            # awaited inside a coroutine, not handed to wait_for bare: a cancelled bare
            # gather keeps its CancelledError unretrieved and asyncio logs it
            await asyncio.gather(*tasks)

        try:
            await asyncio.wait_for(pump(), timeout=limits.timeout)
            completed = await asyncio.wait_for(process.wait(), timeout=limits.timeout)
        except TimeoutError:
            await self._kill(connection, process, err, tasks)
            raise timed_out(argv, limits) from None
        except OutputTooLarge:
            await self._kill(connection, process, err, tasks)
            raise output_too_large(argv, limits) from None
        except BaseException:
            await self._kill(connection, process, err, tasks)
            raise
        stderr = _PGID_LINE.sub(b"", bytes(err), count=1)
        status = completed.exit_status
        if status is None:  # killed by a signal on the remote side
            status = 128 + _signal_number(completed.exit_signal)
        return Completed(
            argv=argv,
            returncode=status,
            stdout=bytes(out).decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
        )

    async def _kill(
        self,
        connection: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        err: bytearray,
        tasks: Sequence[asyncio.Future[None]],
    ) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        marker = _PGID_LINE.match(bytes(err))
        if marker is not None:
            pgid = marker.group(1).decode()
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                await asyncio.wait_for(
                    connection.run(f"kill -KILL -- -{pgid}", check=False), timeout=10
                )
        else:
            log.warning("no process group reported; closing the channel only")
        process.close()


def _signal_number(exit_signal: tuple[str, bool, str, str] | None) -> int:
    if not exit_signal:
        return 0
    try:
        return int(signal.Signals[f"SIG{exit_signal[0]}"])
    except KeyError:
        return 0


_authorities: dict[tuple[Path, float], CertificateAuthority] = {}


def build_ssh_runner(
    machine: str,
    config: SshConfig,
    *,
    path: str | None = None,
    environment: Mapping[str, str] | None = None,
) -> SshRunner:
    """An SshRunner from a machine's ``[machines.<name>.ssh]`` section."""
    if not config.known_hosts.is_file():
        raise ValueError(f"machine {machine}: known_hosts {config.known_hosts} does not exist")
    slot = (config.ca_key, config.certificate_validity)
    if slot not in _authorities:  # one CA (and its issued certificates) per key file
        _authorities[slot] = CertificateAuthority.from_file(
            config.ca_key, config.certificate_validity
        )
    pool = ConnectionPool(
        _authorities[slot],
        PoolSettings(
            known_hosts=config.known_hosts,
            idle_timeout=config.idle_timeout,
            max_connections=config.max_connections,
            max_sessions=config.max_sessions,
            keepalive_interval=config.keepalive_interval,
            connect_timeout=config.connect_timeout,
        ),
    )
    return SshRunner(
        machine,
        [LoginHost.parse(host) for host in config.hosts],
        pool,
        path=path,
        environment=environment,
        host_retry_after=config.host_retry_after,
    )
