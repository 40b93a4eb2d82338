"""Rendering the dashboard's pages: the Jinja2 environment and what every page is given."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

import hpcgate
from hpcgate.accounts import UnixAccount
from hpcgate.web import i18n
from hpcgate.web.security import CSRF_FIELD, page_headers

PREFIX = "/web"
STATIC = f"{PREFIX}/static"

ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("hpcgate.web", "templates"),
    autoescape=True,  # every value is escaped, whatever the template's name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def static(path: str) -> str:
    """The URL of a packaged static file; the version makes a new release's files new URLs."""
    return f"{STATIC}/{path}?v={hpcgate.__version__}"


ENVIRONMENT.globals["static"] = static
ENVIRONMENT.globals["prefix"] = PREFIX
ENVIRONMENT.globals["languages"] = i18n.LANGUAGES
ENVIRONMENT.globals["csrf_field"] = CSRF_FIELD


@dataclass(frozen=True)
class Visitor:
    """Who is looking at a page: their account when logged in, and their language."""

    account: UnixAccount | None
    language: str
    csrf: str
    """The CSRF token to put in this page's forms."""
    machines: list[str]

    @property
    def t(self) -> i18n.Translator:
        return i18n.Translator(self.language)


def language_choice(request: Request) -> str | None:
    """The language asked for explicitly: ``?lang=`` (the switch), else its cookie."""
    asked = request.query_params.get("lang")
    return asked if asked in i18n.LANGUAGES else request.cookies.get(i18n.COOKIE)


def render(
    request: Request,
    visitor: Visitor,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page ``template`` for ``visitor``, with the dashboard's security headers."""
    body = ENVIRONMENT.get_template(template).render(
        t=visitor.t,
        lang=visitor.language,
        visitor=visitor,
        user=visitor.account.name if visitor.account else None,
        csrf=visitor.csrf,
        path=request.url.path,
        query=request.url.query,
        **context,
    )
    response = HTMLResponse(body, status_code=status_code)
    asked = request.query_params.get("lang")
    if asked in i18n.LANGUAGES:  # the switch was used: remember it
        response.set_cookie(
            i18n.COOKIE, asked, max_age=365 * 86400, path="/", samesite="lax", httponly=True
        )
    response.headers["Content-Language"] = visitor.language
    response.headers["Vary"] = "Accept-Language, Cookie"
    return page_headers(response)


_LANG_PARAM = re.compile(r"(^|&)lang=[^&]*")


def switch_url(path: str, query: str, language: str) -> str:
    """This page's URL in ``language``."""
    rest = _LANG_PARAM.sub("", query).lstrip("&")
    return f"{path}?{rest + '&' if rest else ''}lang={language}"


ENVIRONMENT.globals["switch_url"] = switch_url
