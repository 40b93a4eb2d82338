"""The NEWT envelope ``{status, output, status_code, error}`` every route answers with."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def ok(output: Any = "") -> JSONResponse:
    """A successful call: HTTP 200 with ``output``."""
    return JSONResponse({"status": "OK", "output": output, "status_code": 200, "error": ""})


def failure(status_code: int, message: str) -> JSONResponse:
    """A failed call: the HTTP status equals ``status_code``; ``error`` says what to do."""
    return JSONResponse(
        {"status": "ERROR", "output": "", "status_code": status_code, "error": message},
        status_code=status_code,
    )
