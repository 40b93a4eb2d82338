"""HTTP routes. Each one reads the request, calls one service method, wraps the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter


def route(router: APIRouter, path: str, methods: list[str], **kwargs: Any) -> Callable[..., Any]:
    """Register a handler at ``path`` and, hidden from the schema, at ``path/``."""

    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        router.add_api_route(path, handler, methods=methods, **kwargs)
        hidden = {k: v for k, v in kwargs.items() if k not in ("responses", "openapi_extra")}
        router.add_api_route(
            path + "/", handler, methods=methods, include_in_schema=False, **hidden
        )
        return handler

    return register
