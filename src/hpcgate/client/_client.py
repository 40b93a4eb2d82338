"""``Client`` and ``AsyncClient``: one method per route, typed results, clear errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import httpx

from hpcgate.client import calls
from hpcgate.client.errors import ConnectionFailed, Unavailable, WaitTimedOut
from hpcgate.client.models import CommandResult, Job, MachineStatus

T = TypeVar("T")
RETRY_STATUSES = (429, 503)


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def _backoff(attempt: int) -> float:
    return float(min(8.0, 0.5 * 2.0**attempt))


def _should_retry(call: calls.Call[Any], attempt: int, retries: int, status: int | None) -> bool:
    return call.idempotent and attempt < retries and (status is None or status in RETRY_STATUSES)


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


class Client(_TokenHolder):
    """A blocking client of an hpcgate gateway.

    >>> with Client("https://gateway.example.org") as gw:  # doctest: +SKIP
    ...     gw.login("alice", password)
    ...     jobid = gw.submit("ln3", script="#!/bin/bash\\nhostname\\n", name="hi", time=5)
    ...     job = gw.wait("ln3", jobid)
    ...     print(job.state, job.exit_code)

    Reads are retried with backoff after a connection error or a 503/429, and so are
    submits: each carries an ``Idempotency-Key``, so the gateway submits it at most once.
    Kills are never retried.
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
            base_url=_base_url(url), timeout=timeout, verify=verify, transport=transport
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
            return call.parse(calls.output_of(response))

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
        """Poll (with backoff) until the job reaches a final state; returns it.

        Raises WaitTimedOut after ``timeout`` seconds; the job itself is left alone.
        """
        policy = _WaitPolicy(timeout)
        while True:
            try:
                job = self.job(machine, jobid)
                if job.finished:
                    return job
            except Unavailable:
                pass  # a scheduler hiccup is no reason to stop waiting
            time.sleep(policy.next_pause(machine, str(jobid)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_TokenHolder):
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
            base_url=_base_url(url), timeout=timeout, verify=verify, transport=transport
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
            return call.parse(calls.output_of(response))

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
        policy = _WaitPolicy(timeout)
        while True:
            try:
                job = await self.job(machine, jobid)
                if job.finished:
                    return job
            except Unavailable:
                pass
            await asyncio.sleep(policy.next_pause(machine, str(jobid)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
