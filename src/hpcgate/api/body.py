"""Request bodies arrive form-encoded (as the spec's own client sends them) or as JSON."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from hpcgate.errors import BadRequest

MAX_BODY_BYTES = 8 * 1024 * 1024


async def read_fields(request: Request) -> dict[str, Any]:
    """The body's fields as a dict; query parameters fill in fields the body lacks."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fields: dict[str, Any] = {}
    if content_type == "application/json":
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"the body is larger than {MAX_BODY_BYTES} bytes")
        if raw.strip():
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise BadRequest('the JSON body must be an object, e.g. {"command": "ls"}')
            fields = data
    elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form(max_part_size=MAX_BODY_BYTES)
        except Exception as exc:  # starlette raises several kinds for malformed forms
            raise BadRequest(f"the form body cannot be read: {exc}") from None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                content = await value.read()
                try:
                    fields[key] = content.decode()
                except UnicodeDecodeError:
                    raise BadRequest(f"the uploaded {key} is not UTF-8 text") from None
            else:
                fields[key] = value
    elif await request.body():
        raise BadRequest("send the body as application/x-www-form-urlencoded or application/json")
    for key, value in request.query_params.items():
        fields.setdefault(key, value)
    return fields


def text_field(fields: dict[str, Any], name: str, *, max_length: int) -> str:
    """A required text field, without NUL, at most ``max_length`` characters."""
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"give {name} as a non-empty string")
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters")
    if len(value) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters")
    return value
