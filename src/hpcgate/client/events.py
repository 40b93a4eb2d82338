"""Job events for the client: the typed event and the SSE reader.

``Client.events()`` follows ``GET /api/events`` as Server-Sent Events and, when the
connection drops (or the gateway closed a slow stream), reconnects with the last event id
in ``Last-Event-ID``, so nothing is missed within the gateway's retention.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

TYPE_PREFIX = "org.hpcgate.job."
FINAL_KINDS = frozenset(
    {
        "boot_fail",
        "cancelled",
        "completed",
        "deadline",
        "failed",
        "node_fail",
        "out_of_memory",
        "preempted",
        "revoked",
        "timeout",
        "ended",
    }
)


@dataclass(frozen=True)
class Event:
    """One job event (a CloudEvent): ``kind`` is ``running``, ``completed``..."""

    id: str
    type: str
    machine: str
    jobid: str
    state: str
    previous_state: str
    time: str
    exit_code: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.type.removeprefix(TYPE_PREFIX)

    @property
    def final(self) -> bool:
        """The job has ended (this is its last event)."""
        return self.kind in FINAL_KINDS

    @classmethod
    def from_cloud(cls, cloud: dict[str, Any]) -> Event:
        data = cloud.get("data") or {}
        return cls(
            id=str(cloud.get("id", "")),
            type=str(cloud.get("type", "")),
            machine=str(data.get("machine", "")),
            jobid=str(data.get("jobid", "")),
            state=str(data.get("state", "")),
            previous_state=str(data.get("previous_state", "")),
            time=str(cloud.get("time", "")),
            exit_code=data.get("exit_code"),
            data=data,
        )


def params(
    machine: str | None, jobid: str | None, types: list[str] | None, after: str | None
) -> dict[str, str]:
    chosen = {"machine": machine, "jobid": jobid, "type": ",".join(types or []) or None}
    chosen["after"] = after
    return {key: str(value) for key, value in chosen.items() if value}


class SseParser:
    """Server-Sent Events, fed line by line; yields (event name, data, id)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._name = ""
        self._id: str | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        if line == "":
            if not self._data:
                self._name = ""
                return None
            message = (self._name or "message", "\n".join(self._data), self._id)
            self._data, self._name, self._id = [], "", None
            return message
        if line.startswith(":"):
            return None  # a heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._name = value
        elif name == "id":
            self._id = value
        return None


class Dropped(Exception):
    """The gateway closed the stream (this client fell behind): reconnect and resume."""


def decode(message: tuple[str, str, str | None]) -> Event | None:
    name, data, _ = message
    if name == "dropped":
        raise Dropped(data)
    if name != "message":
        return None
    return Event.from_cloud(json.loads(data))


def events_and_beats(lines: Iterator[str]) -> Iterator[Event | None]:
    """The events of an SSE stream read line by line, and None at every heartbeat (a
    moment to look at a clock while nothing happens)."""
    parser = SseParser()
    for line in lines:
        if line.startswith(":"):
            yield None
            continue
        message = parser.feed(line)
        if message is not None:
            event = decode(message)
            if event is not None:
                yield event


async def aevents_and_beats(lines: AsyncIterator[str]) -> AsyncIterator[Event | None]:
    """As :func:`events_and_beats`, from an async stream of lines."""
    parser = SseParser()
    async for line in lines:
        if line.startswith(":"):
            yield None
            continue
        message = parser.feed(line)
        if message is not None:
            event = decode(message)
            if event is not None:
                yield event


def read_lines(lines: Iterator[str]) -> Iterator[Event]:
    """The events of an SSE stream read line by line."""
    return (event for event in events_and_beats(lines) if event is not None)


async def aread_lines(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """The events of an SSE stream read line by line, for ``async for``."""
    async for event in aevents_and_beats(lines):
        if event is not None:
            yield event
