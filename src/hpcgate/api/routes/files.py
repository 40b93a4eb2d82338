"""The FILE module: list, read, upload and change files on a machine, as the user.

Downloads and uploads are streamed in both directions with back-pressure, so a transfer
of any size holds a few chunks in memory; a client that goes away stops the transfer and
kills what served it (the stream is cancelled, and the transport ends its process or
channel).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import ClientDisconnect

from hpcgate.accounts import UnixAccount
from hpcgate.api import schemas
from hpcgate.api.body import parse_json
from hpcgate.api.deps import Caller, caller, gateway
from hpcgate.api.envelope import ok
from hpcgate.api.routes import route
from hpcgate.api.schemas import MACHINE
from hpcgate.errors import BadRequest, GatewayError
from hpcgate.files import FileEntry, PayloadTooLarge, RangeNotSatisfiable, check_path
from hpcgate.services.files import FileService


class _AnyPath(Convertor[str]):
    """A path of any characters, newlines included, so that a path with a control
    character reaches the route and is refused with a 400 that says why (Starlette's
    ``path`` stops at a newline, which would make it an unknown route)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("filepath", _AnyPath())
router = APIRouter(tags=["files"])

PATH_DOC = (
    "`<path>` is absolute: the part after the machine is the path from `/` "
    "(`~` and `~/...` are your home)."
)
MAX_LINES = 100_000
MAX_OP_BODY = 64 * 1024
STDERR_BYTES = 64 * 1024  # what a transfer's helper may print on stderr
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")

FILE_PATH: Any = Path(
    description="the path after `/` (`~` and `~/...`: your home)",
    examples=["home/alice/job.out"],
    # Documented only: a path with a control character gets the gateway's own 400.
    json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f]{0,4000}$"},
)
_TEXT = {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": "^[^\\x00]*$"}
_OP_VARIANTS: list[dict[str, Any]] = [
    {
        "type": "object",
        "required": ["op"],
        "properties": {
            "op": {"type": "string", "enum": ["mkdir"]},
            "parents": {"type": "string", "enum": ["true", "false"]},
        },
    },
    {
        "type": "object",
        "required": ["op", "destination"],
        "properties": {
            "op": {"type": "string", "enum": ["move", "copy"]},
            "destination": {**_TEXT, "pattern": "^[^\\x00-\\x1f\\x7f]+$"},
        },
    },
    {
        "type": "object",
        "required": ["op", "mode"],
        "properties": {
            "op": {"type": "string", "enum": ["chmod"]},
            "mode": {"type": "string", "pattern": "^[0-7]{3,4}$"},
        },
    },
    {
        "type": "object",
        "required": ["op", "target"],
        "properties": {"op": {"type": "string", "enum": ["symlink"]}, "target": _TEXT},
    },
]
CHANGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": _OP_VARIANTS}},
            "application/x-www-form-urlencoded": {"schema": {"oneOf": _OP_VARIANTS}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _raw(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """``responses`` whose success may also be the file's bytes (whole, or a range)."""
    success = responses[200]
    raw = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    content = {**success["content"], **raw}
    return {
        **responses,
        200: {**success, "content": content},
        206: {"description": "A range of the file's bytes", "content": raw},
    }


def files_of(request: Request, name: str) -> FileService:
    """The file service of machine ``name``, as the gateway holds it."""
    return gateway(request).files_of(name)


def user_path(account: UnixAccount, raw: str) -> str:
    """The absolute path a route's ``<path>`` names; ``~`` is the user's home."""
    if raw == "~" or raw.startswith("~/"):
        return check_path(account.home + raw[1:])
    return check_path("/" + raw.lstrip("/") if raw else "/")


def _int(
    value: str | None, name: str, *, default: int, low: int = 0, high: int | None = None
) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or (high is not None and int(value) > high) or int(value) < low:
        upper = f" and {high}" if high is not None else ""
        raise BadRequest(f"{name} must be a whole number between {low}{upper}")
    return int(value)


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


@route(
    router,
    "/file",
    ["GET"],
    summary="The machines whose files you can reach",
    responses=schemas.example([{"name": "ln3", "description": "login node 3"}]),
)
async def machines(request: Request, who: Caller = Depends(caller)) -> JSONResponse:
    gw = gateway(request)
    return ok(
        [
            {"name": name, "description": gw.config.machines[name].description}
            for name in sorted(gw.machines)
        ]
    )


def _etag(entry: FileEntry) -> str:
    return f'"{entry.size:x}-{int(entry.mtime * 1_000_000):x}"'


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``Range``; None to send it all."""
    if not header:
        return None
    found = _RANGE.match(header.strip())
    if found is None:
        return None  # several ranges or another unit: RFC 9110 lets us send it all
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(f"an empty suffix range of a {size}-byte file")
        return max(0, size - suffix), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"the range {header.strip()} is outside the {size}-byte file")
    return start, end


async def _download(
    request: Request, files: FileService, account: UnixAccount, path: str, *, attachment: bool
) -> Response:
    entry = await files.regular_file(account, path)
    size = entry.size
    try:
        wanted = _byte_range(request.headers.get("range"), size)
    except RangeNotSatisfiable as exc:
        response = JSONResponse(
            {"status": "ERROR", "output": "", "status_code": 416, "error": exc.message},
            status_code=416,
        )
        response.headers["content-range"] = f"bytes */{size}"
        return response
    start, end = wanted or (0, size)
    headers = {
        "content-length": str(end - start),
        "etag": _etag(entry),
        "last-modified": _http_date(entry.mtime),
        "accept-ranges": "bytes",
        "cache-control": "private, no-cache",
    }
    if wanted is not None:
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    if attachment:
        name = path.rstrip("/").rsplit("/", 1)[-1] or "download"
        headers["content-disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    request.state.audit_path = path
    if end == start:
        return Response(b"", status_code=206 if wanted else 200, headers=headers)
    stream = files.read(account, path, offset=start, length=end - start)
    # The first chunk before the status line: a file the user may not read is a 403 in
    # the envelope, not a 200 cut short.
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""
    except BaseException:
        await _close(stream)
        raise
    return StreamingResponse(
        _exactly(first, stream, end - start, path),
        status_code=206 if wanted is not None else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


async def _exactly(
    first: bytes, chunks: AsyncIterator[bytes], length: int, path: str
) -> AsyncIterator[bytes]:
    """``first`` and ``chunks``, checked to add up to the promised ``Content-Length``: a
    file that shrank while it was sent ends the connection instead of a short body."""
    sent = len(first)
    try:
        yield first
        async for chunk in chunks:
            sent += len(chunk)
            yield chunk
    finally:
        await _close(chunks)
    if sent != length:
        raise GatewayError(f"{path} changed while it was sent ({sent} of {length} bytes)")


def _http_date(epoch: float) -> str:
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)


@router.api_route(
    "/file/{name}/{path:filepath}",
    methods=["GET"],
    summary="List a directory, describe a file, or read it",
    description=(
        PATH_DOC + " A directory: `output` is the list of its entries sorted by name, paged "
        "with `limit` and `offset` (the headers `X-Total-Count`, `X-Offset` and `X-Limit` say "
        "how many there are and which page this is). A file: a list of its one entry. "
        "`view=read` or `download=true`: the raw bytes (not the envelope), streamed, with "
        "`Range` support (206, 416). `view=head|tail&lines=N`: text in the envelope. "
        "`view=checksum`: the SHA-256, computed on the machine."
    ),
    responses=_raw(
        schemas.example(
            [
                {
                    "name": "job.out",
                    "type": "file",
                    "perms": "-rw-r--r--",
                    "hardlinks": 1,
                    "user": "alice",
                    "group": "alice",
                    "size": 6,
                    "date": "2026-11-28T18:00:00Z",
                    "symlink": "",
                }
            ]
        )
    ),
)
async def read(
    request: Request, name: str = MACHINE, path: str = FILE_PATH, who: Caller = Depends(caller)
) -> Response:
    files = files_of(request, name)
    account = who.account
    target = user_path(account, path)
    query = request.query_params
    view = query.get("view", "")
    if _flag(query.get("download")) or view == "read":
        return await _download(
            request, files, account, target, attachment=_flag(query.get("download"))
        )
    if view in ("head", "tail"):
        lines = _int(query.get("lines"), "lines", default=10, low=1, high=MAX_LINES)
        return ok(await files.head(account, target, lines, tail=view == "tail"))
    if view == "checksum":
        return ok({"path": target, "sha256": await files.checksum(account, target)})
    if view:
        raise BadRequest(f"unknown view {view[:40]!r}; use read, head, tail or checksum")
    is_dir, own = await files.is_directory(account, target)
    if not is_dir:
        return ok([own.public()])
    limit = _int(
        query.get("limit"),
        "limit",
        default=files.limits.page_size,
        low=1,
        high=files.limits.page_size,
    )
    offset = _int(query.get("offset"), "offset", default=0)
    entries, total = await files.listing(account, target, limit=limit, offset=offset)
    # NEWT's shape: ``output`` is the list of entries; the paging figures travel as headers
    response = ok([entry.public() for entry in entries])
    response.headers.update(
        {"X-Total-Count": str(total), "X-Offset": str(offset), "X-Limit": str(limit)}
    )
    return response


@router.api_route(
    "/file/{name}",
    methods=["GET"],
    summary="List the machine's root directory",
    include_in_schema=False,
)
async def read_root(
    request: Request, name: str = MACHINE, who: Caller = Depends(caller)
) -> Response:
    return await read(request, name, "", who)


async def _body(request: Request, limit: int) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the upload is larger than {limit} bytes, the most this machine accepts "
            "(limits.max_upload_bytes)"
        )
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise BadRequest("the client went away mid-upload; nothing was written") from None


@router.api_route(
    "/file/{name}/{path:filepath}",
    methods=["PUT"],
    summary="Upload a file (the raw body)",
    description=(
        PATH_DOC + " The body is streamed to a temporary file beside the target and renamed into "
        "place when complete. `If-None-Match: *` refuses to replace a file (412); "
        "`X-Checksum-Sha256` is verified before the rename (400 on a mismatch, nothing "
        "written). Past `limits.max_upload_bytes`: 413."
    ),
    responses=schemas.example({"location": "/home/alice/input.dat", "size": 1048576}),
    openapi_extra=UPLOAD_BODY,
)
async def upload(
    request: Request, name: str = MACHINE, path: str = FILE_PATH, who: Caller = Depends(caller)
) -> JSONResponse:
    files = files_of(request, name)
    target = user_path(who.account, path)
    request.state.audit_path = target
    size = await files.upload(
        who.account,
        target,
        _body(request, files.limits.max_upload_bytes),
        overwrite=request.headers.get("if-none-match", "").strip() != "*",
        sha256=request.headers.get("x-checksum-sha256"),
    )
    return ok({"location": target, "size": size})


OPS = ("mkdir", "move", "copy", "chmod", "symlink")


@router.api_route(
    "/file/{name}/{path:filepath}",
    methods=["POST"],
    summary="Upload into a directory (multipart), or mkdir, move, copy, chmod, symlink",
    description=(
        PATH_DOC + " `multipart/form-data` with a `file` field: the file is streamed into the "
        "directory `<path>` under its own name. Otherwise a form or JSON body with `op`: "
        "`mkdir` (`parents`), `move` or `copy` (`destination`), `chmod` (octal `mode`), "
        "`symlink` (`target`: `<path>` becomes a link to it)."
    ),
    responses=schemas.example(""),
    openapi_extra=CHANGE_BODY,
)
async def change(
    request: Request, name: str = MACHINE, path: str = FILE_PATH, who: Caller = Depends(caller)
) -> JSONResponse:
    files = files_of(request, name)
    account = who.account
    target = user_path(account, path)
    request.state.audit_path = target
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        from hpcgate.api.multipart import multipart_file

        filename, chunks = await multipart_file(request, files.limits.max_upload_bytes)
        destination = target.rstrip("/") + "/" + filename
        size = await files.upload(account, destination, chunks)
        return ok({"location": destination, "size": size})
    fields = await _small_fields(request)
    op = str(fields.get("op", ""))
    if op == "mkdir":
        await files.mkdir(account, target, parents=_flag(str(fields.get("parents", ""))))
    elif op in ("move", "copy"):
        given = fields.get("destination")
        if not isinstance(given, str) or not given:
            raise BadRequest(f"{op} needs a destination path")
        resolved = user_path(account, given)
        if op == "move":
            await files.move(account, target, resolved)
        else:
            await files.copy(account, target, resolved)
    elif op == "chmod":
        await files.chmod(account, target, str(fields.get("mode", "")))
    elif op == "symlink":
        link_target = fields.get("target")
        if not isinstance(link_target, str):
            raise BadRequest("symlink needs a target")
        await files.symlink(account, target, link_target)
    else:
        raise BadRequest(f"op must be one of {', '.join(OPS)} (or a multipart upload)")
    return ok("")


async def _small_fields(request: Request) -> dict[str, Any]:
    """An operation's form or JSON fields (at most ``MAX_OP_BODY`` bytes; the general body
    limit does not cover the file routes, whose uploads have their own)."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_OP_BODY:
                raise PayloadTooLarge(f"an operation's body is larger than {MAX_OP_BODY} bytes")
    except ClientDisconnect:
        raise BadRequest("the client closed the connection before sending the whole body") from None
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fields: dict[str, Any] = {}
    if content_type == "application/json" and body.strip():
        data = parse_json(bytes(body), what="the body")
        if not isinstance(data, dict):
            raise BadRequest('the JSON body must be an object, e.g. {"op": "mkdir"}')
        fields = data
    elif content_type == "application/x-www-form-urlencoded":
        try:
            fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise BadRequest("the form body is not UTF-8") from None
    elif body.strip():
        raise BadRequest("send the body as application/x-www-form-urlencoded or application/json")
    for key, value in request.query_params.items():
        fields.setdefault(key, value)
    return fields


@router.api_route(
    "/file/{name}/{path:filepath}",
    methods=["DELETE"],
    summary="Remove a file (a directory with recursive=true)",
    description=PATH_DOC,
    responses=schemas.example(""),
)
async def remove(
    request: Request, name: str = MACHINE, path: str = FILE_PATH, who: Caller = Depends(caller)
) -> JSONResponse:
    files = files_of(request, name)
    target = user_path(who.account, path)
    request.state.audit_path = target
    await files.remove(who.account, target, recursive=_flag(request.query_params.get("recursive")))
    return ok("")
