"""The NEWT envelope ``{status, output, status_code, error}`` every route answers with."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """JSON serialised by orjson: several times faster for the column-oriented listings."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def ok(output: Any = "") -> JSONResponse:
    """A successful call: HTTP 200 with ``output``."""
    return FastJSONResponse({"status": "OK", "output": output, "status_code": 200, "error": ""})


def ok_bytes(output: Any) -> bytes:
    """The body of ``ok(output)``, for answers serialised once and served many times."""
    return orjson.dumps({"status": "OK", "output": output, "status_code": 200, "error": ""})


def failure(status_code: int, message: str) -> JSONResponse:
    """A failed call: the HTTP status equals ``status_code``; ``error`` says what to do."""
    return JSONResponse(
        {"status": "ERROR", "output": "", "status_code": status_code, "error": message},
        status_code=status_code,
    )
