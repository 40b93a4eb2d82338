"""What job events are, and the interfaces of the stores that keep them.

A job event is a change a monitor saw between two snapshots of a machine (or a submit or
kill made through the gateway), kept per owner (by the uid the scheduler recorded) with a
retention and a cap, and served as a CloudEvent. Beside the events live what the monitors
need to tell a change from a replay (the last state they reported of every job), the final
records of ended jobs, and webhook subscriptions with their pending deliveries.

Two families implement these: :mod:`hpcgate.stores.sqlite_events` (the embedded default,
one file that survives restarts) and :mod:`hpcgate.stores.redis_events` (Redis Streams,
shared by every gateway process and monitor). Every method may raise StoreUnavailable.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from hpcgate.contract import data_taken
from hpcgate.schedulers.base import JobRecord

TYPE_PREFIX = "org.hpcgate.job."
CLOUDEVENTS_VERSION = "1.0"


def event_order(event_id: str) -> tuple[int, int]:
    """The position of an event id (``<ms>-<n>`` or ``<n>``) for comparisons."""
    first, _, second = event_id.partition("-")
    try:
        return int(first), int(second or 0)
    except ValueError:
        return (-1, -1)


@dataclass(frozen=True)
class JobEvent:
    """One change of one job, for its owner."""

    uid: int
    machine: str
    jobid: str
    kind: str
    """The last part of the CloudEvent type: ``pending``, ``running``, ``completed``..."""
    time: float
    """When the gateway saw the change (epoch seconds)."""
    data: dict[str, Any]
    """The CloudEvent's ``data``: machine, jobid, user, name, state, previous_state..."""
    id: str = ""
    """Given by the store when the event is appended; ordered per user."""

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.kind

    def cloud(self) -> dict[str, Any]:
        """The event as a CloudEvents 1.0 JSON object."""
        return {
            "specversion": CLOUDEVENTS_VERSION,
            "id": self.id,
            "source": f"/api/job/{self.machine}",
            "type": self.type,
            "subject": f"{self.machine}/{self.jobid}",
            "time": data_taken(self.time),
            "datacontenttype": "application/json",
            "data": self.data,
        }

    def to_json(self) -> str:
        """What a store keeps (the id is the store's own)."""
        kept = asdict(self)
        kept.pop("id")
        return json.dumps(kept, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes, event_id: str) -> JobEvent:
        return cls(**json.loads(raw), id=event_id)

    def with_id(self, event_id: str) -> JobEvent:
        return replace(self, id=event_id)


@dataclass(frozen=True)
class Seen:
    """The last state a monitor reported of one job (so nothing is reported twice)."""

    state: str
    """The scheduler's bare state word, e.g. ``RUNNING``."""
    uid: int
    user: str
    name: str
    final: bool = False
    """A final event was sent: later changes of the job are not reported."""
    left: float | None = None
    """When the job left the queue while its final state was not known yet."""
    stored: bool = False
    """The job's final record is in the store."""
    at: float = 0.0
    """When this was last changed (epoch seconds)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Seen:
        fields = json.loads(raw)
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


@dataclass
class MachineEvents:
    """What a monitor keeps between probes of one machine."""

    seen: dict[str, Seen] = field(default_factory=dict)
    since: float | None = None
    """Accounting has been read up to this time (None: never; start from now)."""


def encode_records(rows: list[JobRecord]) -> str:
    """An ended job's rows as JSON, as the event stores keep them. orjson encodes the
    records (dataclasses) itself, ten times faster than ``json.dumps`` of ``asdict``: a
    large array ending is a thousand of them in one probe."""
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError:  # a count past 64 bits, which only json can write
        return json.dumps([asdict(row) for row in rows], separators=(",", ":"))


class EventStore(ABC):
    """Job events per user, the monitors' last reported states, ended jobs' records."""

    @abstractmethod
    async def append(
        self,
        events: list[JobEvent],
        machine: str | None = None,
        seen: dict[str, Seen | None] | None = None,
        since: float | None = None,
    ) -> list[JobEvent]:
        """Append ``events`` (returned with their ids) and, for ``machine``, apply the
        changes of reported states (None removes one) and the accounting mark."""

    async def append_first_report(
        self, event: JobEvent, machine: str, jobid: str, seen: Seen
    ) -> list[JobEvent]:
        """Append ``event`` and report ``seen`` for ``machine``'s job ``jobid`` unless the
        job already has a reported state (a monitor saw it first): then nothing, ``[]``.
        A store may do the check and the append at once."""
        if await self.seen_jobs(machine, [jobid]):
            return []
        return await self.append([event], machine, {jobid: seen})

    @abstractmethod
    async def machine_events(self, machine: str) -> MachineEvents:
        """The reported states of ``machine``'s jobs and its accounting mark."""

    @abstractmethod
    async def accounting_mark(self, machine: str) -> float | None:
        """``machine``'s accounting mark alone (see :class:`MachineEvents`)."""

    @abstractmethod
    async def seen_jobs(self, machine: str, jobids: list[str]) -> dict[str, Seen]:
        """The reported states of some jobs (those that have one)."""

    @abstractmethod
    async def read(self, uid: int, after: str | None, limit: int) -> list[JobEvent]:
        """The user's events after id ``after`` (None: the oldest kept), oldest first."""

    @abstractmethod
    async def feed_cursor(self) -> str:
        """A cursor at the end of the feed of every user's events."""

    @abstractmethod
    async def follow(self, cursor: str, timeout: float) -> tuple[str, list[JobEvent]]:
        """Events appended after ``cursor``, waiting up to ``timeout`` s for one; and the
        new cursor."""

    @abstractmethod
    async def put_finished(
        self, machine: str, jobid: str, rows: list[JobRecord], ttl: float
    ) -> None:
        """Keep an ended job's final record (its row, then its steps) for ``ttl`` s."""

    async def put_finished_many(
        self, machine: str, finished: Mapping[str, list[JobRecord]], ttl: float
    ) -> None:
        """``put_finished`` each of ``finished`` (job id -> rows); a store may do it at once
        (a large array's end is thousands)."""
        for jobid, rows in finished.items():
            await self.put_finished(machine, jobid, rows, ttl)

    @abstractmethod
    async def get_finished(self, machine: str, jobid: str) -> list[JobRecord] | None:
        """An ended job's kept record, or None."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


@dataclass(frozen=True)
class Subscription:
    """A webhook: where to POST which of a user's events, until when."""

    id: str
    uid: int
    user: str
    url: str
    secret: str
    types: tuple[str, ...] = ()
    """Event kinds (``running``, ``completed``...); empty: every kind."""
    machine: str | None = None
    jobid: str | None = None
    created: float = 0.0
    expires: float = 0.0
    status: str = "active"
    """``active`` or ``disabled``."""
    disabled_reason: str = ""
    failures: int = 0
    """Failed delivery attempts in a row."""

    def matches(self, event: JobEvent) -> bool:
        return (
            event.uid == self.uid
            and (not self.types or event.kind in self.types)
            and (self.machine is None or event.machine == self.machine)
            and (self.jobid is None or event.jobid == self.jobid)
        )

    def public(self, now: float) -> dict[str, Any]:
        """The subscription as the API shows it (never the secret)."""
        return {
            "id": self.id,
            "url": self.url,
            "types": [TYPE_PREFIX + kind for kind in self.types],
            "machine": self.machine,
            "jobid": self.jobid,
            "created": data_taken(self.created),
            "expires": data_taken(self.expires),
            "status": "expired" if self.status == "active" and self.expires <= now else self.status,
            "disabled_reason": self.disabled_reason,
            "failures": self.failures,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Subscription:
        fields = json.loads(raw)
        fields["types"] = tuple(fields.get("types", ()))
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Delivery:
    """One event to POST to one subscription, and how many times it was tried."""

    subscription: str
    event: JobEvent
    attempt: int = 0

    @property
    def key(self) -> str:
        return f"{self.subscription}|{self.event.machine}|{self.event.id}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "subscription": self.subscription,
                "attempt": self.attempt,
                "event": self.event.to_json(),
                "id": self.event.id,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Delivery:
        fields = json.loads(raw)
        return cls(
            fields["subscription"],
            JobEvent.from_json(fields["event"], fields["id"]),
            fields["attempt"],
        )


class WebhookStore(ABC):
    """Subscriptions, their pending deliveries (claimed with a lease, so that each is
    made by one process at a time) and their delivery logs."""

    @abstractmethod
    async def put_subscription(self, subscription: Subscription) -> None: ...

    @abstractmethod
    async def subscription(self, subscription_id: str) -> Subscription | None: ...

    @abstractmethod
    async def subscriptions(self, uid: int) -> list[Subscription]: ...

    @abstractmethod
    async def delete_subscription(self, subscription: Subscription) -> None: ...

    @abstractmethod
    async def enqueue(self, deliveries: list[Delivery], due: float) -> None:
        """Add deliveries, each to be made at ``due`` (an existing one is kept as is)."""

    @abstractmethod
    async def claim_due(self, now: float, lease: float, limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries due by ``now``, each hidden from other claims for
        ``lease`` seconds (then due again, should this process die meanwhile)."""

    @abstractmethod
    async def reschedule(self, delivery: Delivery, due: float) -> None:
        """Try ``delivery`` (with its attempt count) again at ``due``."""

    @abstractmethod
    async def finish(self, delivery: Delivery) -> None:
        """Forget a delivery that succeeded or was given up."""

    @abstractmethod
    async def log(self, subscription_id: str, entry: dict[str, Any], size: int) -> None:
        """Add to a subscription's delivery log, keeping the newest ``size`` entries."""

    @abstractmethod
    async def delivery_log(self, subscription_id: str) -> list[dict[str, Any]]:
        """A subscription's delivery log, newest first."""
