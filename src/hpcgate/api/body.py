"""Request bodies arrive form-encoded (as the spec's own client sends them) or as JSON.

How large a body may be is enforced before it gets here (:mod:`hpcgate.api.limits`); this
module caps what a body may hold: the number of form fields and files, and how deeply
JSON nests (the fields are flat: a body nested deeper than a few levels is hostile).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from hpcgate.errors import BadRequest, GatewayError

MAX_FORM_FIELDS = 32  # the routes take at most five
MAX_FORM_FILES = 4
MAX_PART_BYTES = 16 * 1024 * 1024  # the body limit (server.max_body_bytes) is the real cap
MAX_JSON_DEPTH = 16  # a body object holding a jobconf object is 2


async def read_fields(request: Request) -> dict[str, Any]:
    """The body's fields as a dict; query parameters fill in fields the body lacks."""
    try:
        fields = await _body_fields(request)
    except ClientDisconnect:
        raise BadRequest("the client closed the connection before sending the whole body") from None
    for key, value in request.query_params.items():
        fields.setdefault(key, value)
    return fields


async def _body_fields(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fields: dict[str, Any] = {}
    if content_type == "application/json":
        raw = await request.body()
        if raw.strip():
            data = parse_json(raw, what="the body")
            if not isinstance(data, dict):
                raise BadRequest('the JSON body must be an object, e.g. {"command": "ls"}')
            fields = data
    elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form(
                max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_PART_BYTES
            )
        except (GatewayError, ClientDisconnect):
            raise
        except Exception as exc:  # starlette raises several kinds for malformed forms
            detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
            raise BadRequest(f"the form body cannot be read: {detail}") from None
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
    return fields


def parse_json(raw: str | bytes, *, what: str) -> Any:
    """``raw`` parsed as JSON nested at most ``MAX_JSON_DEPTH`` deep, or BadRequest."""
    try:
        data = orjson.loads(raw)  # refuses more than 1024 levels without recursing
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise BadRequest(_too_deep(what)) from None
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise BadRequest(_too_deep(what))
    return data


def _too_deep(what: str) -> str:
    return f"{what} nests JSON more than {MAX_JSON_DEPTH} levels deep; its fields are flat"


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (without recursing)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not any(isinstance(item, dict | list) for item in level):
            return False
    return True


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
