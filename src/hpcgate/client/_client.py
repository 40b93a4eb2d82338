"""``Client`` and ``AsyncClient``: one method per route, typed results, clear errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import httpx

from hpcgate.client import calls
from hpcgate.client import events as job_events
from hpcgate.client.errors import ConnectionFailed, NotFound, Unavailable, WaitTimedOut
from hpcgate.client.files import AsyncFileMethods, FileMethods
from hpcgate.client.models import CommandResult, Job, MachineStatus

T = TypeVar("T")
RETRY_STATUSES = (429, 503)
"""Statuses an idempotent call is sent again on; a keyed submit also on 504 (the gateway
cut it and the job may exist: resent with its key, it is found, or submitted once)."""


CONNECTION_LIMITS = httpx.Limits(keepalive_expiry=4.0)
"""An idle connection is not reused after 4 s: the gateway (uvicorn) closes one idle for
5 s, and a request sent on it just then is lost with "Server disconnected" (for a kill or
an upload, which are not resent, that is an error the user sees)."""


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def _backoff(attempt: int) -> float:
    return float(min(8.0, 0.5 * 2.0**attempt))


def _should_retry(call: calls.Call[Any], attempt: int, retries: int, status: int | None) -> bool:
    if not call.idempotent or attempt >= retries:
        return False
    return status is None or status in RETRY_STATUSES or (status == 504 and call.method == "POST")


class _WaitPolicy:
    """Polling for ``wait``: starts fast, backs off to ``longest`` seconds between polls."""

    def __init__(self, timeout: float | None, first: float = 0.5, longest: float = 10.0) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.pause = first
        self.longest = longest

    def next_pause(self, machine: str, jobid: str) -> float:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimedOut(f"job {jobid} on {machine} did not finish within {self.timeout:g} s")
        pause = self.pause
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline - time.monotonic()))
        self.pause = min(self.longest, self.pause * 1.5)
        return pause

    def check(self, machine: str, jobid: str) -> None:
        """WaitTimedOut once the deadline has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimedOut(f"job {jobid} on {machine} did not finish within {self.timeout:g} s")

    def at_most(self, seconds: float) -> float:
        """``seconds``, or less if the deadline comes first."""
        if self.deadline is None:
            return seconds
        return max(0.0, min(seconds, self.deadline - time.monotonic()))

    def read_timeout(self, machine: str, jobid: str) -> float:
        """How long the job's event stream may stay silent before it is reopened."""
        self.check(machine, jobid)
        return max(0.1, self.at_most(STREAM_READ_TIMEOUT))


STREAM_READ_TIMEOUT = 60.0  # heartbeats come every 15 s by default: a silent minute is dead
RECHECK_SECONDS = 300.0
"""How often ``wait`` looks at the job itself while following its events (against an
event the gateway could not see, such as one that ended while no monitor ran yet)."""


def _stream_request(
    machine: str | None,
    jobid: str | None,
    types: list[str] | None,
    last: str | None,
    read: float = STREAM_READ_TIMEOUT,
) -> dict[str, Any]:
    headers = {"Accept": "text/event-stream"}
    if last:
        headers["Last-Event-ID"] = last
    return {
        "params": job_events.params(machine, jobid, types, None),
        "headers": headers,
        "timeout": httpx.Timeout(30.0, read=read),
    }


class _Following:
    """Where ``wait`` is in the job's event stream, across reconnections."""

    def __init__(self) -> None:
        self.last = "0"  # from the oldest kept event: the job may have ended meanwhile
        self.attempt = 0
        self.since = time.monotonic()

    def pause(self, policy: _WaitPolicy) -> float:
        """Before reconnecting after a failure: backs off, never past the deadline."""
        pause = policy.at_most(_backoff(self.attempt))
        self.attempt = min(self.attempt + 1, 4)
        return pause

    def due_for_recheck(self) -> bool:
        if time.monotonic() - self.since < RECHECK_SECONDS:
            return False
        self.since = time.monotonic()
        return True


class _TokenHolder:
    """The bearer token both clients send, kept in their httpx client's headers."""

    _http: httpx.Client | httpx.AsyncClient

    @property
    def token(self) -> str | None:
        """The bearer token of the current login, for storing and reusing."""
        header = self._http.headers.get("Authorization", "")
        return header.removeprefix("Bearer ") or None

    @token.setter
    def token(self, token: str | None) -> None:
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        else:
            self._http.headers.pop("Authorization", None)


class Client(_TokenHolder, FileMethods):
    """A blocking client of an hpcgate gateway.

    >>> with Client("https://gateway.example.org") as gw:  # doctest: +SKIP
    ...     gw.login("alice", password)
    ...     jobid = gw.submit("ln3", script="#!/bin/bash\\nhostname\\n", name="hi", time=5)
    ...     job = gw.wait("ln3", jobid)
    ...     print(job.state, job.exit_code)

    Reads are retried with backoff after a connection error or a 503/429, and so are
    submits (also after a 504, a submit the gateway cut): each carries an
    ``Idempotency-Key``, so the gateway submits it at most once. Kills are never retried.
    """

    _http: httpx.Client

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.Client(
            base_url=_base_url(url),
            timeout=timeout,
            verify=verify,
            transport=transport,
            limits=CONNECTION_LIMITS,
        )
        if token:
            self.token = token

    def _send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, data=call.data, params=call.params, headers=call.headers
                )
            except httpx.TransportError as exc:
                if _should_retry(call, attempt, self.retries, None):
                    time.sleep(_backoff(attempt))
                    attempt += 1
                    continue
                raise ConnectionFailed(f"cannot reach {self._http.base_url}: {exc}") from exc
            if _should_retry(call, attempt, self.retries, response.status_code):
                time.sleep(_backoff(attempt))
                attempt += 1
                continue
            return call.result(response)

    def login(self, username: str, password: str) -> str:
        """Log in; the client then sends the returned token with every request."""
        self.token = self._send(calls.login(username, password))
        return self.token

    def logout(self) -> None:
        """End the session on the gateway (the token stops working everywhere)."""
        self._send(calls.logout())
        self.token = None

    def whoami(self) -> str | None:
        """The logged-in user's name, or None."""
        return self._send(calls.whoami())

    def run(self, machine: str, command: str) -> CommandResult:
        """Run a command line on ``machine`` with your shell; check ``retcode``."""
        return self._send(calls.run(machine, command))

    def submit(
        self,
        machine: str,
        *,
        script: str | None = None,
        path: str | None = None,
        remote_file: str | None = None,
        **options: Any,
    ) -> str:
        """Submit a batch job; returns its id.

        ``script`` is the script's text (written to ``path`` on the machine, default
        ``~/newt/``); or ``remote_file`` names a script already there. ``options``: name,
        time (minutes), partition, cores, mem_gb, nodes, workdir, args.
        """
        return self._send(
            calls.submit(
                machine, script=script, path=path, remote_file=remote_file, options=options
            )
        )

    def queue(self, machine: str) -> list[Job]:
        """Your jobs still queued or running on ``machine``."""
        return self._send(calls.queue(machine))

    def job(self, machine: str, jobid: str) -> Job:
        """One of your jobs, with its steps."""
        return self._send(calls.job(machine, jobid))

    def cancel(self, machine: str, jobid: str) -> None:
        """Kill one of your jobs."""
        self._send(calls.cancel(machine, jobid))

    def status(self) -> list[MachineStatus]:
        """Every machine's status."""
        return self._send(calls.status())

    def wait(self, machine: str, jobid: str, *, timeout: float | None = None) -> Job:
        """Wait until the job reaches a final state; returns it.

        Follows the job's events on the gateway's stream (``GET /api/events``) when the
        gateway offers one, so nothing polls; on a gateway without job events, polls the
        job with backoff. Raises WaitTimedOut after ``timeout`` seconds; the job itself is
        left alone.
        """
        policy = _WaitPolicy(timeout)
        following: _Following | None = _Following()
        while True:
            try:
                job = self.job(machine, jobid)
                if job.finished:
                    return job
            except Unavailable:
                pass  # a scheduler hiccup is no reason to stop waiting
            if following is not None and self._follow_to_end(
                machine, str(jobid), policy, following
            ):
                following = None  # the final event came (or never will): poll until it shows
            if following is None:
                time.sleep(policy.next_pause(machine, str(jobid)))

    def _follow_to_end(
        self, machine: str, jobid: str, policy: _WaitPolicy, following: _Following
    ) -> bool:
        """Follow the job's events until its final one (True), or until it is time to
        look at the job again (False); True at once from a gateway without job events."""
        while True:
            read = policy.read_timeout(machine, jobid)
            request = _stream_request(machine, jobid, None, following.last, read)
            try:
                with self._http.stream("GET", "/events", **request) as response:
                    if response.status_code != 200:
                        response.read()
                        calls.output_of(response)
                    following.attempt = 0
                    for event in job_events.events_and_beats(response.iter_lines()):
                        policy.check(machine, jobid)
                        if event is not None:
                            following.last = event.id
                            if event.final:
                                return True
                        elif following.due_for_recheck():
                            return False
            except NotFound:
                return True
            except (httpx.TransportError, job_events.Dropped, Unavailable):
                pass
            time.sleep(following.pause(policy))

    def events(
        self,
        machine: str | None = None,
        jobid: str | None = None,
        *,
        types: list[str] | None = None,
        after: str | None = None,
    ) -> Iterator[job_events.Event]:
        """Your job events as they come (optionally of one machine, one job, some types
        such as ``completed``), after event id ``after`` if given. Reconnects after a
        dropped connection and resumes where it left off; stop by leaving the loop."""
        last, attempt = after, 0
        while True:
            try:
                request = _stream_request(machine, jobid, types, last)
                with self._http.stream("GET", "/events", **request) as response:
                    if response.status_code != 200:
                        response.read()
                        calls.output_of(response)
                    attempt = 0
                    for event in job_events.read_lines(response.iter_lines()):
                        last = event.id
                        yield event
            except (httpx.TransportError, job_events.Dropped, Unavailable):
                pass
            time.sleep(_backoff(attempt))
            attempt = min(attempt + 1, 4)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_TokenHolder, AsyncFileMethods):
    """The same API as :class:`Client`, for asyncio code (``await gw.submit(...)``)."""

    _http: httpx.AsyncClient

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        verify: bool | str = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=_base_url(url),
            timeout=timeout,
            verify=verify,
            transport=transport,
            limits=CONNECTION_LIMITS,
        )
        if token:
            self.token = token

    async def _send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, data=call.data, params=call.params, headers=call.headers
                )
            except httpx.TransportError as exc:
                if _should_retry(call, attempt, self.retries, None):
                    await asyncio.sleep(_backoff(attempt))
                    attempt += 1
                    continue
                raise ConnectionFailed(f"cannot reach {self._http.base_url}: {exc}") from exc
            if _should_retry(call, attempt, self.retries, response.status_code):
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
                continue
            return call.result(response)

    async def login(self, username: str, password: str) -> str:
        self.token = await self._send(calls.login(username, password))
        return self.token

    async def logout(self) -> None:
        await self._send(calls.logout())
        self.token = None

    async def whoami(self) -> str | None:
        return await self._send(calls.whoami())

    async def run(self, machine: str, command: str) -> CommandResult:
        return await self._send(calls.run(machine, command))

    async def submit(
        self,
        machine: str,
        *,
        script: str | None = None,
        path: str | None = None,
        remote_file: str | None = None,
        **options: Any,
    ) -> str:
        return await self._send(
            calls.submit(
                machine, script=script, path=path, remote_file=remote_file, options=options
            )
        )

    async def queue(self, machine: str) -> list[Job]:
        return await self._send(calls.queue(machine))

    async def job(self, machine: str, jobid: str) -> Job:
        return await self._send(calls.job(machine, jobid))

    async def cancel(self, machine: str, jobid: str) -> None:
        await self._send(calls.cancel(machine, jobid))

    async def status(self) -> list[MachineStatus]:
        return await self._send(calls.status())

    async def wait(self, machine: str, jobid: str, *, timeout: float | None = None) -> Job:
        """As :meth:`Client.wait`: follows the job's events, else polls."""
        policy = _WaitPolicy(timeout)
        following: _Following | None = _Following()
        while True:
            try:
                job = await self.job(machine, jobid)
                if job.finished:
                    return job
            except Unavailable:
                pass
            if following is not None and await self._follow_to_end(
                machine, str(jobid), policy, following
            ):
                following = None
            if following is None:
                await asyncio.sleep(policy.next_pause(machine, str(jobid)))

    async def _follow_to_end(
        self, machine: str, jobid: str, policy: _WaitPolicy, following: _Following
    ) -> bool:
        """As :meth:`Client._follow_to_end`."""
        while True:
            read = policy.read_timeout(machine, jobid)
            request = _stream_request(machine, jobid, None, following.last, read)
            try:
                async with self._http.stream("GET", "/events", **request) as response:
                    if response.status_code != 200:
                        await response.aread()
                        calls.output_of(response)
                    following.attempt = 0
                    async for event in job_events.aevents_and_beats(response.aiter_lines()):
                        policy.check(machine, jobid)
                        if event is not None:
                            following.last = event.id
                            if event.final:
                                return True
                        elif following.due_for_recheck():
                            return False
            except NotFound:
                return True
            except (httpx.TransportError, job_events.Dropped, Unavailable):
                pass
            await asyncio.sleep(following.pause(policy))

    async def events(
        self,
        machine: str | None = None,
        jobid: str | None = None,
        *,
        types: list[str] | None = None,
        after: str | None = None,
    ) -> AsyncIterator[job_events.Event]:
        """As :meth:`Client.events`, for ``async for``."""
        last, attempt = after, 0
        while True:
            try:
                request = _stream_request(machine, jobid, types, last)
                async with self._http.stream("GET", "/events", **request) as response:
                    if response.status_code != 200:
                        await response.aread()
                        calls.output_of(response)
                    attempt = 0
                    async for event in job_events.aread_lines(response.aiter_lines()):
                        last = event.id
                        yield event
            except (httpx.TransportError, job_events.Dropped, Unavailable):
                pass
            await asyncio.sleep(_backoff(attempt))
            attempt = min(attempt + 1, 4)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
