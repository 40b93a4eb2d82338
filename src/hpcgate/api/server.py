"""The HTTP/1.1 protocol the gateway serves with: uvicorn's, with deadlines and caps.

uvicorn bounds neither the time a request's head or body may take to arrive nor the size
of the head (httptools, its fast parser, has no cap), and it counts connections only once
a head is complete. So a few hundred sockets that never finish their headers hold the
process's descriptors for ever. This protocol closes a connection whose head is not
complete within ``server.header_timeout`` or whose body is not complete within
``server.body_timeout`` (a total, not an idle time: trickling a byte now and then does not
help), refuses a head larger than ``server.max_header_bytes`` (431), and refuses a
connection past ``server.max_connections`` (503) at once, before it reads anything.

Every refusal is a NEWT envelope with ``Connection: close``; the connection is then
drained for a moment before it is closed, so the client reads the answer instead of a
reset.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from hpcgate.config import ServerConfig

log = logging.getLogger(__name__)

# Descriptors kept free for what the requests themselves open: pipes to the actions they
# start, SSH connections, the store, log files.
RESERVED_DESCRIPTORS = 256
MIN_BODY_RATE = 64 * 1024
"""Bytes per second a long body (a file upload) must keep arriving at for its deadline
to restart: a large upload over a slow link finishes, a trickle does not."""
LINGER_SECONDS = 2.0
WARN_EVERY_SECONDS = 10.0
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_REASONS |= {503: b"Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a request may take to arrive, how large its head may be, how many at once."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    max_header_bytes: int

    @classmethod
    def from_config(cls, server: ServerConfig, descriptors: int) -> ConnectionLimits:
        """The limits of ``server``, with as many connections as ``descriptors`` allow."""
        affordable = max(1, (descriptors - RESERVED_DESCRIPTORS) // 2)
        connections = server.max_connections
        if connections > affordable:
            log.warning(
                "server.max_connections = %d needs more than the %d file descriptors this "
                "process may open; serving at most %d connections (raise the hard "
                "RLIMIT_NOFILE, e.g. LimitNOFILE= in the systemd unit)",
                connections,
                descriptors,
                affordable,
            )
            connections = affordable
        return cls(
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
            max_connections=connections,
            max_header_bytes=server.max_header_bytes,
        )


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one where allowed; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as nr_open:  # the kernel's ceiling
                hard = int(nr_open.read())
        except (OSError, ValueError):
            hard = max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    try:
        current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, current_hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
        return soft
    log.info("open-files limit raised from %d to %d", soft, hard)
    return hard


def protocol_class(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.run(http=...)`` that enforces ``limits``."""

    class Protocol(GuardedHttpProtocol):
        settings = limits

    return Protocol


class _Refusal(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and caps of :class:`ConnectionLimits`.

    httptools (uvicorn[standard]'s default) over h11: it parses several times faster, and
    the one thing h11 has that it lacks, a cap on the head, is counted here.
    """

    settings: ClassVar[ConnectionLimits]
    _last_warned: ClassVar[dict[int, float]] = {}

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # between messages, or inside a head: bytes count as head
        self._in_body = False
        self._head_bytes = 0  # bytes received since the head began (upper bound)
        self._head_size = 0  # the parsed request line and headers
        self._closing = False
        self._has_body = False  # the request being parsed declared a body
        self._close_after_answer = False
        self._body_bytes = 0  # body bytes received since the body deadline was armed

    # connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.settings.max_connections
        if len(self.connections) > limit:
            self._refuse(
                503,
                f"the gateway is serving its maximum of {limit} connections "
                "(server.max_connections); retry in a few seconds",
            )
            return
        self._arm(self.settings.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # draining before the close: the answer is already sent
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refusal):
                self._refuse(exc.__context__.status, exc.__context__.message)
                return
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        if self._in_head and self._head_bytes > self.settings.max_header_bytes:
            self._refuse(431, self._head_too_large())

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        self._has_body = False
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.settings.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self._has_body = True
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._body_bytes = 0
        self._arm(self.settings.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._in_body, self._head_bytes = True, False, 0
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if self._has_body:  # it may be answered before its body arrives
            cycle.send = functools.partial(self._send_maybe_early, cycle, cycle.send)
        super()._start_asgi_task(cycle, app)

    async def _send_maybe_early(self, cycle: Any, send: Any, message: Any) -> None:
        # A pipelined request's head is parsed only after the previous body ended, so the
        # body in progress is this cycle's only when it is the newest.
        if message["type"] != "http.response.start" or not (cycle is self.cycle and self._in_body):
            await send(message)
            return
        # Answered before its body arrived (401, 412, 413, ...): the connection ends, and
        # the head says so (a client that reused it would lose its next request). uvicorn
        # writes "connection: close" for a cycle without keep-alive, and would also close
        # at once when the answer ends: on_response_complete lingers instead.
        cycle.keep_alive = False
        await send(message)
        cycle.keep_alive = True
        self._close_after_answer = True

    def on_response_complete(self) -> None:
        answered_early = self._close_after_answer or (not self.pipeline and self._in_body)
        if answered_early and not self.transport.is_closing():
            # answered before the body arrived (e.g. 401, 413): the rest is not wanted,
            # and reading it could take as long as the client likes. (With a request
            # waiting in the pipeline, the body in progress is that request's.)
            self.server_state.total_requests += 1
            self._linger_then_close()
            return
        super().on_response_complete()

    # deadlines

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        seconds = self.settings.header_timeout
        self._refuse(
            408, f"the request's head did not arrive within {seconds:g} s (server.header_timeout)"
        )

    def _body_timed_out(self) -> None:
        self._deadline = None
        arrived, self._body_bytes = self._body_bytes, 0
        if not self.transport.is_closing() and (
            # the application has not read what arrived yet: the client is not the slow one
            self.flow.read_paused
            # or a long body (an upload) is still arriving at a reasonable rate
            or arrived >= MIN_BODY_RATE * self.settings.body_timeout
        ):
            self._arm(self.settings.body_timeout, self._body_timed_out)
            return
        seconds = self.settings.body_timeout
        self._refuse(
            408, f"the request's body did not arrive within {seconds:g} s (server.body_timeout)"
        )

    # refusals

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.settings.max_header_bytes:
            raise _Refusal(431, self._head_too_large())

    def _head_too_large(self) -> str:
        limit = self.settings.max_header_bytes
        return (
            f"the request line and headers are larger than {limit} bytes (server.max_header_bytes)"
        )

    def _invalid(self) -> None:
        self.logger.warning("Invalid HTTP request received.")
        self._refuse(400, "invalid HTTP request")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` in the envelope, then close the connection."""
        if self.transport.is_closing() or self._closing:
            return
        self._warn(status, message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # the application's answer to this request, if any, goes nowhere now
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self.transport.write(_raw_answer(status, message))
        self._linger_then_close()

    def _linger_then_close(self) -> None:
        """Close after the client has read the answer: half-close, drain, then close.

        Closing a socket with unread data sends a reset, which can destroy the answer
        before the client reads it.
        """
        self._closing = True
        self._disarm()
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        linger = min(LINGER_SECONDS, self.settings.header_timeout)
        self._deadline = self.loop.call_later(linger, self.transport.close)

    def _warn(self, status: int, message: str) -> None:
        # at most one line per kind of refusal every few seconds: a flood must not fill logs
        now = time.monotonic()
        if now - self._last_warned.get(status, -WARN_EVERY_SECONDS) >= WARN_EVERY_SECONDS:
            self._last_warned[status] = now
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
            log.warning("refused %s with %d: %s", client, status, message)


def _raw_answer(status: int, message: str) -> bytes:
    body = orjson.dumps({"status": "ERROR", "output": "", "status_code": status, "error": message})
    head = [
        f"HTTP/1.1 {status} ".encode() + _REASONS.get(status, b"Bad Request"),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        b"cache-control: no-store",
        b"x-content-type-options: nosniff",
    ]
    if status == 503:
        head.append(b"retry-after: 2")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def uvicorn_settings(server: ServerConfig) -> dict[str, Any]:
    """The uvicorn settings of ``hpcgate serve``, with one process or several."""
    return {
        "host": server.host,
        "port": server.port,
        "log_level": server.log_level,
        "log_config": None,  # hpcgate.api.observe sets logging up (text or JSON lines)
        "access_log": server.access_log,
        # CPython's loop, not uvloop: it starts processes with vfork, while libuv forks the
        # whole gateway (3.5x slower per action at 80 MB here: 88 vs 302 spawns/s).
        "loop": "asyncio",
        "ssl_certfile": str(server.tls_certfile) if server.tls_certfile else None,
        "ssl_keyfile": str(server.tls_keyfile) if server.tls_keyfile else None,
        # client addresses (audit log, lockouts) come from a proxy only if it is trusted
        "proxy_headers": bool(server.forwarded_allow_ips),
        "forwarded_allow_ips": server.forwarded_allow_ips or None,
    }
