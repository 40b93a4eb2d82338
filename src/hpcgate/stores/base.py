"""What hpcgate keeps between requests, and the interfaces of the stores that keep it.

Three kinds of record live in a store: the monitors' snapshots of each machine (with
each user's jobs in them, and each user's last submit or kill, for read-your-writes),
login sessions, and the records of idempotent submits. Two families implement them:
:mod:`hpcgate.stores.memory` for one process (the embedded default) and
:mod:`hpcgate.stores.redis`, shared by every gateway process and monitor. Every method
may raise :class:`StoreUnavailable`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from hpcgate.errors import Unavailable
from hpcgate.stores.snapshot import OwnJobs, Snapshot


class StoreUnavailable(Unavailable):
    """The store cannot be reached (503)."""


class StatusStore(ABC):
    """Snapshots by machine, each user's jobs in them, and the time each user last
    changed their queue.

    A monitor puts a :class:`~hpcgate.stores.snapshot.Survey` after each successful
    probe and a plain :class:`Snapshot` after a failed one (the jobs of the last survey
    are then kept).
    Readers of the status take the small snapshots (:meth:`get_many`); a user's queue
    view takes only that user's jobs (:meth:`jobs_of`).
    """

    @abstractmethod
    async def put(self, snapshot: Snapshot, ttl: float) -> None:
        """Replace the machine's snapshot atomically, and its jobs too when it is a
        survey; both disappear after ``ttl`` seconds."""

    @abstractmethod
    async def get_many(self, machines: Iterable[str]) -> dict[str, Snapshot | None]:
        """The latest snapshot of each machine (None: none, or expired)."""

    async def get(self, machine: str) -> Snapshot | None:
        return (await self.get_many([machine]))[machine]

    @abstractmethod
    async def jobs_of(self, machine: str, uid: int) -> OwnJobs | None:
        """The jobs of owner ``uid`` in the machine's latest survey (None: no survey)."""

    @abstractmethod
    async def note_write(self, machine: str, user: str, when: float, ttl: float) -> None:
        """Remember that ``user`` submitted or killed a job on ``machine`` at ``when``."""

    @abstractmethod
    async def last_write(self, machine: str, user: str) -> float | None:
        """When ``user`` last changed their queue on ``machine``, if within the ttl."""

    async def close(self) -> None:  # noqa: B027 - optional: only networked stores need it
        """Release connections."""


# -- sessions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """Who is logged in, and until when (epoch seconds)."""

    username: str
    created: float
    expires: float

    @property
    def remaining(self) -> int:
        return max(0, int(self.expires - time.time()))


def digest(token: str) -> str:
    """What a store keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(username: str, lifetime: float) -> tuple[str, str, Session]:
    """A fresh random token, the digest a store keeps, and the session."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    return token, digest(token), Session(username=username, created=now, expires=now + lifetime)


class SessionStore(ABC):
    """Where sessions live. A token is never kept, only its SHA-256."""

    @abstractmethod
    async def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        """Start a session; returns the token (shown once to the client) and the session."""

    @abstractmethod
    async def get(self, token: str) -> Session | None:
        """The live session for ``token``, or None when unknown or expired."""

    @abstractmethod
    async def delete(self, token: str) -> bool:
        """End the session; True if there was one."""


# -- idempotent submits -----------------------------------------------------------------

PENDING, DONE, UNKNOWN = "pending", "done", "unknown"


@dataclass(frozen=True)
class IdempotencyRecord:
    """What became of the first request with an Idempotency-Key."""

    fingerprint: str
    state: str
    """``pending`` (in flight), ``done`` (``jobid`` is set) or ``unknown`` (no clear answer)."""
    jobid: str = ""
    claimed: float = 0.0
    """Epoch seconds when the attempt that wrote this record began."""
    owner: str = ""
    """The gateway process that made that attempt (host, pid and a random instance id)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> IdempotencyRecord:
        fields = json.loads(raw)
        known = cls.__dataclass_fields__
        return cls(**{name: value for name, value in fields.items() if name in known})


class IdempotencyStore(ABC):
    """Records of idempotent requests by key, each expiring ``ttl`` seconds after written."""

    @abstractmethod
    async def claim(
        self, key: str, record: IdempotencyRecord, ttl: float
    ) -> IdempotencyRecord | None:
        """Store ``record`` if ``key`` is free (returns None), else return the existing one."""

    @abstractmethod
    async def get(self, key: str) -> IdempotencyRecord | None: ...

    @abstractmethod
    async def put(self, key: str, record: IdempotencyRecord, ttl: float) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def swap(
        self, key: str, expected: IdempotencyRecord, record: IdempotencyRecord, ttl: float
    ) -> bool:
        """Replace ``key``'s record with ``record`` only if it is still ``expected``
        (atomically: of two racing swaps, one wins); True if it was replaced."""

    @abstractmethod
    async def kept_since(self) -> float:
        """Epoch seconds since which this store holds every record written to it. A key
        claimed fresh may still have had a record before then, lost with the store."""

    async def close(self) -> None:  # noqa: B027 - optional: only stores with files need it
        """Release connections and files."""


# -- where each job's output goes ------------------------------------------------------

OUTPUT_RECORD_TTL = 30 * 86400.0
"""Seconds an output record is kept (a job's output outlives the job by this long)."""


@dataclass(frozen=True)
class OutputRecord:
    """Where one job writes its output, and whose it is."""

    uid: int
    user: str
    stdout: str
    stderr: str
    complete: bool = True
    """False while a path still depends on something the job has not got yet (its host)."""
    ended: bool = False
    """The job was seen ended: its paths are final and the controller need not be asked."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> OutputRecord:
        fields = json.loads(raw)
        known = cls.__dataclass_fields__
        return cls(**{name: value for name, value in fields.items() if name in known})


class OutputPathStore(ABC):
    """Output records by machine and job id."""

    @abstractmethod
    async def put(self, machine: str, jobid: str, record: OutputRecord, ttl: float) -> None: ...

    @abstractmethod
    async def get(self, machine: str, jobid: str) -> OutputRecord | None: ...

    async def put_many(self, machine: str, records: Mapping[str, OutputRecord], ttl: float) -> None:
        """``put`` each of ``records`` (job id -> record); a store may do it at once."""
        for jobid, record in records.items():
            await self.put(machine, jobid, record, ttl)

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


@dataclass(frozen=True)
class Stores:
    """One family of stores, sharing one connection where it has one."""

    status: StatusStore
    sessions: SessionStore
    idempotency: IdempotencyStore
    output_paths: OutputPathStore
    """Where each job writes its output (:mod:`hpcgate.stores.output_paths`)."""

    async def close(self) -> None:
        await self.status.close()
        await self.idempotency.close()
        await self.output_paths.close()
