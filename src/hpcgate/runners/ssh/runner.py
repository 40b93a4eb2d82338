"""The SSH runner: actions run on a machine's login nodes, as the user, over pooled SSH.

Remote commands must be run by a POSIX shell (sh, bash, zsh, ksh, ...): argument vectors
are quoted with :func:`shlex.join`. Every command first exports a random action marker
and prints its shell's PID on stderr (sshd makes that shell the leader of a new session
and process group). When the action ends, however it ends, a second channel kills, on
the login node, its process group, its session and every process of the user whose
environment carries the marker (but a batch job's: the job inherits it from sbatch);
then the channel is closed, so the gateway keeps nothing of the action. A user cannot be
put in a cgroup over SSH: a process that both leaves the session and clears its
environment escapes (docs/security.md, "Limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shlex
import signal
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import cast

import asyncssh

from hpcgate import metrics
from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError, MachineConfig
from hpcgate.errors import Forbidden, Unavailable
from hpcgate.plugins import BuildContext
from hpcgate.process import Completed, Limits
from hpcgate.runners.base import Runner
from hpcgate.runners.containment import ACTION_MARKER, JOB_CGROUP, JOB_DAEMONS
from hpcgate.runners.pump import pump
from hpcgate.runners.ssh.authority import CertificateAuthority
from hpcgate.runners.ssh.files import sftp_read, sftp_write
from hpcgate.runners.ssh.pool import ConnectionPool, HostFailed, LoginHost, PoolSettings

log = logging.getLogger(__name__)

_PGID_MARKER = b"hpcgate-pgid:"
_PGID_LINE = re.compile(rb"hpcgate-pgid:(\d+)\n")
_KILL_TIMEOUT = 10.0


_IN_A_JOB = (
    # in_a_job PID: whether the process is a batch job's (JOB_CGROUP, JOB_DAEMONS); no
    # process started per ancestor: status is read by the shell itself
    f"in_a_job() {{ grep -qsE '{JOB_CGROUP}' \"/proc/$1/cgroup\" && return 0; p=$1; d=0; "
    'while [ "$p" -gt 1 ] && [ "$d" -lt 64 ]; do n=; pp=; u=; '
    "{ while read -r k v; do case $k in Name:) n=$v;; PPid:) pp=$v;; "
    'Uid:) u=${v%%[!0-9]*}; break;; esac; done < "/proc/$p/status"; } 2>/dev/null; '
    '[ -n "$pp" ] || return 1; '
    f'case $n in {"|".join(JOB_DAEMONS)}) [ "$u" = 0 ] && return 0;; esac; '
    "p=$pp; d=$((d + 1)); done; return 1; }; "
)


def _kill_script(leader: str | None, marker: str) -> str:
    """What kills, on the login node, everything an action started (but a batch job it
    submitted, which carries its marker too: see JOB_DAEMONS). Run by ``sh`` whatever
    the user's login shell (zsh would not split ``$pids``; tcsh and fish not parse it)."""
    group = f"kill -s KILL -- -{leader}; pkill -KILL -s {leader}; " if leader else ""
    # several rounds: a process may be forking while the first one runs
    script = (
        f"{group}{_IN_A_JOB}for round in 1 2 3; do pids=; "
        f"for f in $(grep -lsxzF {ACTION_MARKER}={marker} /proc/[0-9]*/environ); do "
        'pid=${f#/proc/}; pid=${pid%/environ}; in_a_job "$pid" || pids="$pids $pid"; done; '
        '[ -n "$pids" ] || break; kill -s KILL $pids; done'
    )
    return f"sh -c {shlex.quote(script)}"


class _Action(asyncssh.SSHClientProcess[bytes]):
    """A remote process that also says when its command has exited.

    sshd reports the exit status as soon as the command exits, but closes the channel only
    once nothing holds its output open, which a daemonised grandchild may never allow.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def _exit(self, status: int) -> None:
        if not self.exited.done():
            self.exited.set_result(status)

    def exit_status_received(self, status: int) -> None:
        self._exit(status)

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._exit(128 + _signal_number(signal))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._exit(128)  # the channel closed without saying how the command ended

    async def wait_exit(self) -> int:
        return await asyncio.shield(self.exited)


class _LeaderReader:
    """An action's stderr, without the first line, in which its shell gives its PID."""

    def __init__(self, stream: asyncssh.SSHReader[bytes]) -> None:
        self._stream = stream
        self._head: bytes | None = b""
        self.leader: str | None = None

    async def read(self, n: int = -1) -> bytes:
        while self._head is not None:
            chunk = await self._stream.read(n)
            head = self._head + chunk
            found = _PGID_LINE.match(head)
            if found:
                self.leader, self._head = found.group(1).decode(), None
                if rest := head[found.end() :]:
                    return rest
            elif not chunk or b"\n" in head or not _PGID_MARKER.startswith(head[:13]):
                self._head = None
                return head
            else:
                self._head = head
        return await self._stream.read(n)


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

    @classmethod
    def from_config(cls, name: str, machine: MachineConfig, context: BuildContext) -> SshRunner:
        """The runner of ``machines.<name>`` from its ``[machines.<name>.ssh]`` section.

        The certificate authority is shared by every machine with the same CA key, and
        lives as long as the gateway that built it.
        """
        ssh = machine.ssh
        if ssh is None:
            raise ConfigError(
                f"machines.{name}.ssh: missing; runner = 'ssh' needs a [machines.{name}.ssh] "
                "section with hosts, known_hosts and ca_key"
            )
        if not ssh.known_hosts.is_file():
            raise ConfigError(
                f"machines.{name}.ssh.known_hosts: {ssh.known_hosts} does not exist; create it "
                f"with ssh-keyscan -p PORT HOST >> {ssh.known_hosts} for each login node"
            )
        authority = context.shared(
            ("ssh-ca", ssh.ca_key, ssh.certificate_validity),
            lambda: CertificateAuthority.from_file(
                ssh.ca_key, ssh.certificate_validity, setting=f"machines.{name}.ssh.ca_key"
            ),
        )
        pool = ConnectionPool(
            authority,
            PoolSettings(
                known_hosts=ssh.known_hosts,
                idle_timeout=ssh.idle_timeout,
                max_connections=ssh.max_connections,
                max_sessions=ssh.max_sessions,
                keepalive_interval=ssh.keepalive_interval,
                connect_timeout=ssh.connect_timeout,
            ),
        )
        return cls(
            name,
            [LoginHost.parse(host) for host in ssh.hosts],
            pool,
            path=machine.path,
            environment=machine.environment,
            host_retry_after=ssh.host_retry_after,
        )

    async def close(self) -> None:
        """Close every pooled connection and the pool's reaper; safe to call twice."""
        await self.pool.close()

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
            except HostFailed as exc:
                metrics.SSH_CONNECTION_FAILURES.labels(str(host)).inc()
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
        marker = secrets.token_hex(12)
        processes = limits.max_processes
        # RLIMIT_AS, in KiB: each process of the action may map this much
        memory = (
            f"ulimit -v {limits.max_memory_bytes // 1024} 2>/dev/null; "
            if limits.max_memory_bytes is not None
            else ""
        )
        marked = (
            f"export {ACTION_MARKER}={marker}; "
            # RLIMIT_NPROC: bash, zsh and ksh say -u, dash -p
            f"ulimit -u {processes} 2>/dev/null || ulimit -p {processes} 2>/dev/null; "
            f"{memory}"
            f"printf '{_PGID_MARKER.decode()}%s\\n' \"$$\" >&2; {command}"
        )
        for attempt in (1, 2):
            async with self.pool.lease(account.name, host) as connection:
                try:
                    _, session = await connection.create_session(_Action, marked, encoding=None)
                except (asyncssh.ChannelOpenError, asyncssh.ConnectionLost, OSError) as exc:
                    # dead before the command started: safe to replace the connection once
                    self.pool.discard(account.name, host)
                    if attempt == 2:
                        raise HostFailed(f"connection lost: {exc}") from None
                    continue
                self._down.pop(host, None)
                action = cast(_Action, session)
                return await self._finish(connection, action, marker, argv, limits, stdin)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _finish(
        self,
        connection: asyncssh.SSHClientConnection,
        action: _Action,
        marker: str,
        argv: tuple[str, ...],
        limits: Limits,
        stdin: bytes | None,
    ) -> Completed:
        stderr_reader = _LeaderReader(action.stderr)

        async def feed() -> None:
            if stdin:
                action.stdin.write(stdin)
            action.stdin.write_eof()

        async def kill() -> None:
            script = _kill_script(stderr_reader.leader, marker)
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                await asyncio.wait_for(connection.run(script, check=False), _KILL_TIMEOUT)

        returncode, stdout, stderr = await pump(
            argv,
            limits,
            stdout=action.stdout,
            stderr=stderr_reader,
            feed=feed,
            exited=action.wait_exit,
            kill=kill,
            release=action.close,
        )
        return Completed(
            argv=argv,
            returncode=returncode,
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
        )

    # file access: SFTP on the user's pooled connection (see .files)

    @contextlib.asynccontextmanager
    async def _file_lease(
        self, account: UnixAccount
    ) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """A pooled connection of ``account`` to the first login node that answers."""
        if account.uid == 0:
            raise Forbidden("actions never run as root")
        for host in self._candidates():
            try:
                lease = self.pool.lease(account.name, host)
                connection = await lease.__aenter__()
            except HostFailed as exc:
                metrics.SSH_CONNECTION_FAILURES.labels(str(host)).inc()
                self._down[host] = (time.monotonic() + self.host_retry_after, str(exc))
                continue
            self._down.pop(host, None)
            try:
                yield connection
            except BaseException as exc:
                if not await lease.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await lease.__aexit__(None, None, None)
            return
        reasons = [f"{host}: {why}" for host, (_, why) in self._down.items()]
        raise Unavailable(f"no login node of {self.machine} can be used: {'; '.join(reasons)}")

    def read_bytes(
        self, account: UnixAccount, path: str, *, offset: int, length: int, limits: Limits
    ) -> AsyncIterator[bytes]:
        return sftp_read(
            self._file_lease, account, path, offset=offset, length=length, limits=limits
        )

    async def write_bytes(
        self,
        account: UnixAccount,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        limits: Limits,
    ) -> int:
        return await sftp_write(self._file_lease, account, path, chunks, limits=limits)


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0
