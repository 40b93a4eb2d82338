"""The web dashboard, served by the gateway itself under ``/web/`` (and ``/`` leads there).

Server-rendered pages (Jinja2) with a little JavaScript (htmx and its SSE extension,
shipped in this package: nothing is loaded from elsewhere at run time), on the same
services, session cookie and rules as the API. :func:`install` adds it to the app, with
the interactive API docs at ``/api/docs`` served from packaged Swagger UI files.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from hpcgate.web.pages import router
from hpcgate.web.security import page_headers
from hpcgate.web.templates import STATIC

SWAGGER_UI = "vendor/swagger-ui-dist-5.35.0"
DOCS_URL = "/api/docs"


class PackagedFiles(StaticFiles):
    """The package's static files, cacheable (their URLs carry the package's version)."""

    def file_response(self, *args: object, **kwargs: object) -> Response:
        response = super().file_response(*args, **kwargs)  # type: ignore[arg-type]
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path.endswith(".map"):  # source maps are not shipped
            path = "missing"
        return await super().get_response(path, scope)


def docs_page(openapi_url: str, title: str) -> HTMLResponse:
    """FastAPI's Swagger UI page on the packaged Swagger UI, under a CSP that allows its
    one inline script by hash and nothing from another origin."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - API docs",
        swagger_js_url=f"{STATIC}/{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/{SWAGGER_UI}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
    body = bytes(page.body).decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", body, flags=re.DOTALL)
    )
    csp = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return page_headers(HTMLResponse(body), csp=csp)


def install(app: FastAPI) -> None:
    """Add the dashboard's pages, its static files and the API docs page to ``app``
    (created with ``docs_url=None``)."""
    app.include_router(router)
    files = PackagedFiles(packages=[("hpcgate.web", "static")])
    # Static files only are compressed; pages carry secrets next to reflected input (BREACH).
    app.mount(STATIC, GZipMiddleware(files, minimum_size=1024), name="web-static")
    openapi_url = app.openapi_url or "/api/openapi.json"

    async def api_docs() -> HTMLResponse:
        return docs_page(openapi_url, app.title)

    app.add_api_route(DOCS_URL, api_docs, methods=["GET"], include_in_schema=False)
