"""Job events of the logged-in user: a Server-Sent Events stream, or JSON by long poll."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hpcgate.api import schemas
from hpcgate.api.deps import Caller, caller, gateway
from hpcgate.api.envelope import ok
from hpcgate.api.routes import route
from hpcgate.errors import BadRequest, NotFound
from hpcgate.services.events import DROPPED, EventFilter, EventService, Watcher, newer
from hpcgate.stores.events import JobEvent

router = APIRouter(tags=["events"])

MAX_PAGE = 1000


def events_of(request: Request) -> EventService:
    service = gateway(request).events
    if service is None or not service.config.enabled:
        raise NotFound("job events are not enabled on this gateway")
    return service


def frame(event: JobEvent) -> str:
    """One SSE message: the CloudEvent, with its id for ``Last-Event-ID``."""
    return f"id: {event.id}\ndata: {json.dumps(event.cloud(), separators=(',', ':'))}\n\n"


@route(
    router,
    "/events",
    ["GET"],
    summary="Your job events (Server-Sent Events, or JSON by long poll)",
    description=(
        "Every event is a CloudEvents 1.0 JSON object (type `org.hpcgate.job.<state>`, "
        "subject `<machine>/<jobid>`). As `text/event-stream` (the default): new events as "
        "they come, after those following `Last-Event-ID` (or `?after=`) when given, with a "
        "comment line as heartbeat. With `Accept: application/json`: the events after "
        "`after` (the oldest kept without it), waiting up to `wait` seconds for one."
    ),
    responses=schemas.streamed(schemas.example([schemas.EVENT_EXAMPLE])),
)
async def events(
    request: Request,
    machine: str | None = Query(None, max_length=64),
    jobid: str | None = Query(None, max_length=40),
    type: str | None = Query(None, max_length=1000),
    after: str | None = Query(None, max_length=64),
    wait: float = Query(0.0, ge=0),
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    who: Caller = Depends(caller),
) -> Response:
    service = events_of(request)
    wanted = EventFilter.parse(machine, jobid, type)
    after = request.headers.get("last-event-id") or after or None
    if after is not None and not _looks_like_id(after):
        raise BadRequest(f"{after[:64]!r} is not an event id")
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/event-stream" not in accept:
        wait = min(wait, service.config.max_wait)
        return await _long_poll(service, who.account.uid, after, wanted, wait, limit)
    watcher, backlog = await service.follow(who.account.uid, after, wanted)
    return StreamingResponse(
        _stream(service, watcher, backlog, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _looks_like_id(text: str) -> bool:
    first, _, second = text.partition("-")
    return first.isdigit() and (not second or second.isdigit())


async def _long_poll(
    service: EventService,
    uid: int,
    after: str | None,
    wanted: EventFilter,
    wait: float,
    limit: int,
) -> JSONResponse:
    found = await service.read(uid, after, wanted, limit)
    if not found and wait > 0:
        watcher, found = await service.follow(uid, after or "0", wanted)
        try:
            if not found:
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except TimeoutError:
                    item = None
                if isinstance(item, JobEvent) and newer(item, after):
                    found = [item]
                    while not watcher.queue.empty() and len(found) < limit:
                        more = watcher.queue.get_nowait()
                        if isinstance(more, JobEvent):
                            found.append(more)
        finally:
            service.hub.remove(watcher)
    found = found[:limit]
    return ok(
        {
            "events": [event.cloud() for event in found],
            "last_id": found[-1].id if found else after,
        }
    )


async def _stream(
    service: EventService, watcher: Watcher, backlog: list[JobEvent], after: str | None
) -> AsyncIterator[str]:
    last = after
    try:
        yield "retry: 2000\n\n"
        for event in backlog:
            yield frame(event)
            last = event.id
        while True:
            try:
                item = await asyncio.wait_for(watcher.queue.get(), timeout=service.config.heartbeat)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is DROPPED:
                message = {
                    "error": "this stream fell too far behind and was closed; reconnect with "
                    f"Last-Event-ID: {last} to resume",
                    "last_id": last,
                }
                yield f"event: dropped\ndata: {json.dumps(message)}\n\n"
                return
            if isinstance(item, JobEvent) and newer(item, last):
                yield frame(item)
                last = item.id
    finally:
        service.hub.remove(watcher)
