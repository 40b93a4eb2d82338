"""Idempotent submits: a retried ``POST /api/job`` with the same ``Idempotency-Key``
returns the first job's id and submits nothing.

The first request claims the key atomically (``SET NX`` in Redis), submits, and records
the job id. A retry with the same key and body gets that id, waiting while the first is
still in flight (two racing retries submit once); with a different body it is a 409. If
the first submit ended without a clear answer (the scheduler timed out: the job may or may
not exist), retries get a 409 that says so rather than risk a second job. Keys are per
user and machine, and expire after ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hpcgate.errors import BadRequest, Conflict, GatewayError, Unavailable

MAX_KEY_LENGTH = 255
PENDING, DONE, UNKNOWN = "pending", "done", "unknown"


@dataclass(frozen=True)
class Record:
    fingerprint: str
    state: str
    jobid: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Record:
        return cls(**json.loads(raw))


class IdempotencyStore(ABC):
    """Records of idempotent requests by key."""

    @abstractmethod
    async def claim(self, key: str, record: Record, ttl: float) -> Record | None:
        """Store ``record`` if ``key`` is free (returns None), else return the existing one."""

    @abstractmethod
    async def get(self, key: str) -> Record | None: ...

    @abstractmethod
    async def put(self, key: str, record: Record, ttl: float) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> None: ...


class MemoryIdempotencyStore(IdempotencyStore):
    """For one gateway process."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[Record, float]] = {}

    def _live(self, key: str) -> Record | None:
        entry = self._records.get(key)
        if entry is None or entry[1] <= time.monotonic():
            self._records.pop(key, None)
            return None
        return entry[0]

    async def claim(self, key: str, record: Record, ttl: float) -> Record | None:
        existing = self._live(key)
        if existing is None:
            self._records[key] = (record, time.monotonic() + ttl)
        return existing

    async def get(self, key: str) -> Record | None:
        return self._live(key)

    async def put(self, key: str, record: Record, ttl: float) -> None:
        self._records[key] = (record, time.monotonic() + ttl)

    async def delete(self, key: str) -> None:
        self._records.pop(key, None)


def fingerprint(machine: str, fields: Mapping[str, Any]) -> str:
    """A digest of what was asked, to tell a true retry from a reused key."""
    canonical = json.dumps([machine, dict(fields)], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters, e.g. a UUID"
        )
    return key


class IdempotentSubmits:
    """Runs a submit at most once per (user, machine, key)."""

    def __init__(self, store: IdempotencyStore, ttl: float, wait: float) -> None:
        self.store = store
        self.ttl = ttl
        self.wait = wait  # how long a retry waits for the first request in flight

    async def submit(
        self,
        user: str,
        machine: str,
        key: str,
        digest: str,
        submit: Callable[[], Awaitable[str]],
    ) -> str:
        slot = f"{user}:{machine}:{check_key(key)}"
        existing = await self.store.claim(slot, Record(digest, PENDING), self.ttl)
        if existing is None:
            return await self._first(slot, digest, submit)
        return await self._retry(slot, digest, existing)

    async def _first(self, slot: str, digest: str, submit: Callable[[], Awaitable[str]]) -> str:
        try:
            jobid = await submit()
        except GatewayError as exc:
            if exc.status_code < 500:  # refused outright (4xx): nothing exists, a retry may run
                await self.store.delete(slot)
            else:  # unreachable or timed out: the job may exist
                await self.store.put(slot, Record(digest, UNKNOWN), self.ttl)
            raise
        except BaseException:  # cancelled, or a bug: the job may exist all the same
            await self.store.put(slot, Record(digest, UNKNOWN), self.ttl)
            raise
        await self.store.put(slot, Record(digest, DONE, jobid), self.ttl)
        return jobid

    async def _retry(self, slot: str, digest: str, record: Record | None) -> str:
        deadline = time.monotonic() + self.wait
        while True:
            if record is None:
                raise Conflict(
                    "the first request with this Idempotency-Key was refused; "
                    "send the request again with a new key"
                )
            if record.fingerprint != digest:
                raise Conflict(
                    "this Idempotency-Key was used for a different request; "
                    "use a new key for a new job"
                )
            if record.state == DONE:
                return record.jobid
            if record.state == UNKNOWN:
                raise Conflict(
                    "the first request with this Idempotency-Key ended without a "
                    "clear answer from the scheduler: the job may exist; check "
                    "your queue before submitting again with a new key"
                )
            if time.monotonic() > deadline:
                raise Unavailable(
                    "the first request with this Idempotency-Key is still "
                    "running; try again shortly"
                )
            await asyncio.sleep(0.05)
            record = await self.store.get(slot)
