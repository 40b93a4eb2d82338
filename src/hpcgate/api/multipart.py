"""A streamed ``multipart/form-data`` upload: the ``file`` part, as it arrives.

Starlette's form parser spools a file part to a temporary file on the gateway's disk
first; an upload must instead go straight to the machine, as the user, with
back-pressure. This reads the body until the ``file`` part's headers are complete and
hands back its file name and an iterator over its bytes (other parts are skipped).
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from hpcgate.errors import BadRequest
from hpcgate.files import PayloadTooLarge

MAX_HEADER_BYTES = 16 * 1024


class _Parts:
    """The parser's callbacks: the current part's headers, and the file part's data."""

    def __init__(self) -> None:
        self.field = b""
        self.value = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.in_file = False
        self.filename: str | None = None
        self.pending: list[bytes] = []
        self.file_done = False

    def on_part_begin(self) -> None:
        self.headers, self.header_bytes = {}, 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]
        self._count(end - start)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]
        self._count(end - start)

    def _count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            raise BadRequest("a multipart part's headers are too large")

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _disposition, options = parse_options_header(self.headers.get(b"content-disposition"))
        if options.get(b"name") == b"file" and self.filename is None:
            raw = options.get(b"filename", b"")
            name = posixpath.basename(raw.decode("utf-8", errors="replace").replace("\\", "/"))
            if not name or name in (".", ".."):
                raise BadRequest("the file part has no usable filename")
            self.filename = name
            self.in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.pending.append(bytes(data[start:end]))

    def on_part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.file_done = True


async def multipart_file(request: Request, limit: int) -> tuple[str, AsyncIterator[bytes]]:
    """The ``file`` part's file name and its bytes, streamed from the request body."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("a multipart/form-data body needs a boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(
            f"the upload is larger than {limit} bytes, the most this machine accepts "
            "(limits.max_upload_bytes)"
        )
    parts = _Parts()
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": parts.on_part_begin,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
        },
    )
    body = request.stream().__aiter__()

    async def feed() -> bool:
        """Feed the next piece of the body; False at its end."""
        try:
            chunk = await body.__anext__()
        except StopAsyncIteration:
            return False
        except ClientDisconnect:
            raise BadRequest("the client went away mid-upload; nothing was written") from None
        try:
            parser.write(chunk)
        except BadRequest:
            raise
        except Exception as exc:
            raise BadRequest(f"the multipart body cannot be read: {exc}") from None
        return True

    while parts.filename is None:
        if not await feed():
            raise BadRequest("the multipart body has no part named file")

    async def data() -> AsyncIterator[bytes]:
        while True:
            while parts.pending:
                yield parts.pending.pop(0)
            if parts.file_done:
                return
            if not await feed():
                raise BadRequest("the multipart body ended inside the file part")

    return parts.filename, data()
