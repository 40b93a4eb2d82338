"""The NEWT envelope ``{status, output, status_code, error}`` every route answers with."""

from __future__ import annotations

from collections.abc import Callable, Hashable
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


class EncodedAnswers:
    """Successful answers serialised once per version of the data behind them, each kept
    under what it answers (every machine's status; one user's queue on one machine), so
    that every poll between two snapshots is answered with the same bytes."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._bodies: dict[Hashable, tuple[Hashable, bytes]] = {}

    def ok(self, slot: Hashable, version: Hashable, output: Callable[[], Any]) -> bytes:
        """The body of ``ok(output())``, built only when ``version`` of ``slot`` is new."""
        cached = self._bodies.get(slot)
        if cached is not None and cached[0] == version:
            return cached[1]
        body = ok_bytes(output())
        if len(self._bodies) >= self.max_entries:
            self._bodies.clear()
        self._bodies[slot] = (version, body)
        return body


def failure(status_code: int, message: str) -> JSONResponse:
    """A failed call: the HTTP status equals ``status_code``; ``error`` says what to do."""
    return JSONResponse(
        {"status": "ERROR", "output": "", "status_code": status_code, "error": message},
        status_code=status_code,
    )
