"""The JOB module: submit, list, inspect and kill batch jobs."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from hpcgate.api import schemas
from hpcgate.api.body import read_fields
from hpcgate.api.deps import Caller, caller, gateway, machine
from hpcgate.api.envelope import Encoded, EncodedAnswers, etag_matches, ok, ok_bytes, tagged
from hpcgate.api.routes import route
from hpcgate.api.schemas import JOBID, MACHINE
from hpcgate.contract import data_taken
from hpcgate.jobspec import parse_jobid, parse_submission
from hpcgate.schedulers.base import JobRecord
from hpcgate.services.queue_cache import Listing

router = APIRouter(tags=["jobs"])

Columns = dict[str, Callable[[JobRecord], Any]]

QUEUE_COLUMNS: Columns = {
    "status": lambda job: job.status,
    "nodelist": lambda job: job.nodelist,
    "name": lambda job: job.name,
    "partition": lambda job: job.partition,
    "user": lambda job: job.user,
    "time": lambda job: job.elapsed,
    "nodes": lambda job: job.nodes,
    "id": lambda job: job.id,
}
JOB_COLUMNS: Columns = {
    "status": lambda row: row.status,
    "tasks": lambda row: "" if row.tasks is None else row.tasks,
    "name": lambda row: row.name,
    "partition": lambda row: row.partition,
    "time": lambda row: row.elapsed,
    "nodes": lambda row: row.nodes,
    "id": lambda row: row.id,
    "exitcode": lambda row: row.exit_code,
    "user": lambda row: row.user,
    "nodelist": lambda row: row.nodelist,
}


def columns(rows: Iterable[JobRecord], spec: Columns) -> dict[str, dict[str, Any]]:
    """Column-oriented output, as the spec lists jobs: one object per field, keyed by id."""
    rows = list(rows)
    return {field: {row.id: get(row) for row in rows} for field, get in spec.items()}


RawHeaders = list[tuple[bytes, bytes]]
_JSON = (b"content-type", b"application/json")


def cached_reply(
    encoded: Encoded, if_none_match: bytes | str | None, extra: RawHeaders
) -> tuple[int, RawHeaders, bytes]:
    """Status, headers and body of a read answered with ``encoded``: 304 without a body
    when the client already holds it (``If-None-Match``), else 200 with it."""
    headers = [*extra, (b"etag", encoded.etag)]
    if etag_matches(if_none_match, encoded.etag):
        return 304, headers, b""
    length = (b"content-length", str(len(encoded.body)).encode())
    return 200, [length, _JSON, *headers], encoded.body


def freshness(taken: float, now: float) -> RawHeaders:
    """How old a listing's data is (``Age``, seconds) and when it was read, as headers that
    leave the spec's column-oriented body alone."""
    return [(b"age", str(max(0, int(now - taken))).encode()), (b"x-data-taken", _taken(taken))]


@functools.lru_cache(maxsize=1024)
def _taken(taken: float) -> bytes:
    return data_taken(taken).encode()


def raw_response(status: int, headers: RawHeaders, body: bytes) -> Response:
    response = Response(status_code=status)
    response.body = body
    response.raw_headers = headers
    return response


@route(
    router,
    "/job/{name}",
    ["POST"],
    summary="Submit a batch job",
    description=(
        "Give `jobscript` (written to `jobfilepath`, default `~/newt/`) or `jobfile` (a "
        "script already on the machine), and optionally `jobconf`. With an "
        "`Idempotency-Key` header (e.g. a UUID), a retry with the same key and body returns "
        "the first job's id and submits nothing; the same key with another body is a 409."
    ),
    openapi_extra=schemas.body(schemas.SubmitBody),
    responses=schemas.example(schemas.SUBMIT_EXAMPLE),
)
async def submit(
    request: Request, name: str = MACHINE, who: Caller = Depends(caller)
) -> JSONResponse:
    target = machine(request, name)
    limit = gateway(request).config.limits.script_bytes
    submission = parse_submission(await read_fields(request), max_script_bytes=limit)
    submitted = await target.submit_job(
        who.account, submission, idempotency_key=request.headers.get("idempotency-key")
    )
    request.state.audit_jobid = submitted.jobid
    return ok(submitted.public())


@route(
    router,
    "/job/{name}",
    ["GET"],
    summary="Your jobs still in the queue",
    description=(
        "Served from the monitors' latest snapshot when it is fresh and newer than your "
        "last submit or kill here, else from the scheduler. The `Age` header says how old "
        "the data is in seconds; `X-Data-Taken` when it was read."
    ),
    responses=schemas.example(schemas.QUEUE_EXAMPLE),
)
async def queue(request: Request, name: str = MACHINE, who: Caller = Depends(caller)) -> Response:
    target = machine(request, name)
    listing = await target.queue(who.account)
    return raw_response(
        *queue_reply(
            request.app.state.answers,
            target.name,
            who,
            listing,
            request.headers.get("if-none-match"),
        )
    )


def queue_reply(
    answers: EncodedAnswers,
    machine_name: str,
    who: Caller,
    listing: Listing,
    if_none_match: bytes | str | None,
) -> tuple[int, RawHeaders, bytes]:
    """The answer to ``GET /api/job/<machine>`` for ``listing``; the ETag names the user."""
    slot = ("queue", machine_name, who.account.name)

    def output() -> dict[str, dict[str, Any]]:
        return columns(listing.jobs, QUEUE_COLUMNS)

    if listing.from_snapshot:  # the same for this user until the next snapshot
        encoded = answers.encoded(slot, listing.taken, output)
    else:
        encoded = tagged(slot, ok_bytes(output()))
    return cached_reply(encoded, if_none_match, freshness(listing.taken, time.time()))


@route(
    router,
    "/job",
    ["GET"],
    summary="Status of every machine",
    description=(
        "Read from the monitors' snapshots only: no scheduler is asked. `queue` counts jobs "
        "by state code, `time` is how long the probe took (s), `health` the success rate "
        "of recent probes; `info` counts nodes by partition and state. `stale` is true "
        "when no monitor has written within the configured bound."
    ),
    responses=schemas.example(schemas.STATUS_EXAMPLE),
)
async def status(request: Request) -> Response:
    gw = gateway(request)
    if not gw.config.status.public:
        await caller(request)
    version, output = await gw.status.current()
    answers: EncodedAnswers = request.app.state.answers
    encoded = answers.encoded("status", version, output)
    return raw_response(*cached_reply(encoded, request.headers.get("if-none-match"), []))


@route(
    router,
    "/job/{name}/{jobid}",
    ["GET"],
    summary="One of your jobs, with its steps",
    responses=schemas.example(schemas.JOB_EXAMPLE),
)
async def job(
    request: Request, name: str = MACHINE, jobid: str = JOBID, who: Caller = Depends(caller)
) -> JSONResponse:
    target = machine(request, name)
    return job_reply(await target.job(who.account, parse_jobid(jobid)))


def job_reply(rows: list[JobRecord]) -> JSONResponse:
    """A job's detail: its row, then its steps, in columns."""
    return ok(columns(rows, JOB_COLUMNS))


@route(
    router,
    "/job/{name}",
    ["DELETE"],
    summary="Kill one of your jobs",
    description="The job id goes in the body (form or JSON) or the query string as `jobid`.",
    openapi_extra=schemas.body(schemas.KillBody),
    responses=schemas.example(""),
)
async def kill(
    request: Request, name: str = MACHINE, who: Caller = Depends(caller)
) -> JSONResponse:
    target = machine(request, name)
    jobid = parse_jobid((await read_fields(request)).get("jobid"))
    request.state.audit_jobid = jobid
    await target.cancel(who.account, jobid)
    return ok("")


@route(
    router,
    "/job/{name}/{jobid}",
    ["DELETE"],
    summary="Kill one of your jobs (id in the path)",
    responses=schemas.example(""),
)
async def kill_by_path(
    request: Request, name: str = MACHINE, jobid: str = JOBID, who: Caller = Depends(caller)
) -> JSONResponse:
    target = machine(request, name)
    await target.cancel(who.account, parse_jobid(jobid))
    return ok("")
