"""Job output: what a job printed, read at an offset or followed as Server-Sent Events."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from hpcgate.api import schemas
from hpcgate.api.deps import Caller, caller, gateway
from hpcgate.api.envelope import ok
from hpcgate.api.routes import route
from hpcgate.api.schemas import JOBID, MACHINE
from hpcgate.errors import BadRequest
from hpcgate.jobspec import parse_jobid

router = APIRouter(tags=["jobs"])

MAX_READ_BYTES = 4 * 1024 * 1024
DEFAULT_READ_BYTES = 1024 * 1024
QUERY = [
    {
        "name": "stream",
        "in": "query",
        "schema": {"type": "string", "enum": ["stdout", "stderr"], "default": "stdout"},
    },
    {"name": "offset", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{0,18}$"}},
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_READ_BYTES},
    },
    {"name": "follow", "in": "query", "schema": {"type": "boolean", "default": False}},
]
"""The query, documented (it is read from the request, so the gateway's own 400
answers a malformed one)."""


def _wants_events(request: Request) -> bool:
    follow = request.query_params.get("follow", "").lower() in ("1", "true", "yes")
    return follow or "text/event-stream" in request.headers.get("accept", "")


def _offset(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest("offset must be a whole number of bytes (0 or more)")
    return int(raw)


@route(
    router,
    "/job/{name}/{jobid}/output",
    ["GET"],
    summary="What one of your jobs printed (read, or followed live)",
    description=(
        "`stream=stdout|stderr` (default stdout), `offset=N` (bytes), `limit` (bytes, at "
        "most 4 MiB). Answers `{path, offset, data, size, eof, next_offset}`: `data` is "
        "UTF-8 text of whole characters, the next read starts at `next_offset`, and `eof` "
        "is true once the job has ended and everything was read. With `Accept: "
        "text/event-stream` or `follow=true` the answer is Server-Sent Events: `output` "
        "events (`id` = the byte offset after them; data `{offset, data, size}`) until the "
        "job ends, then one `eof` event, and the stream closes. Reconnect with "
        "`Last-Event-ID` to resume. The paths come from the controller, expanded as Slurm "
        "does, and are recorded at submit: output stays readable after Slurm forgets the "
        "job. Another user's job: 403; a job whose output path is unknown: 404."
    ),
    responses=schemas.streamed(
        schemas.example(
            {
                "path": "/home/alice/slurm-4816214.out",
                "offset": 0,
                "data": "hello\n",
                "size": 6,
                "eof": True,
                "next_offset": 6,
            }
        )
    ),
    openapi_extra={"parameters": QUERY},
)
async def job_output(
    request: Request, name: str = MACHINE, jobid: str = JOBID, who: Caller = Depends(caller)
) -> Response:
    service = gateway(request).output_of(name)
    job = parse_jobid(jobid)
    request.state.audit_jobid = job
    stream = request.query_params.get("stream", "stdout")
    offset = _offset(request.headers.get("last-event-id") or request.query_params.get("offset"))
    if _wants_events(request):
        events = await service.follow(who.account, job, stream, offset)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )
    limit = request.query_params.get("limit")
    max_bytes = DEFAULT_READ_BYTES
    if limit:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_READ_BYTES:
            raise BadRequest(f"limit must be between 1 and {MAX_READ_BYTES} bytes")
        max_bytes = int(limit)
    chunk = await service.read(who.account, job, stream, offset, max_bytes)
    return ok(chunk.public())
