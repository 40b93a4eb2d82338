"""The dashboard's pages. Like the API routes, each reads the request and calls the same
service methods (login, status, Machine): no rule is implemented twice."""

from __future__ import annotations

import contextlib
import functools
import inspect
import posixpath
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match

from hpcgate import contract
from hpcgate.accounts import UnixAccount
from hpcgate.api.body import read_fields
from hpcgate.api.deps import (
    COOKIE_NAME,
    client_address,
    gateway,
    same_origin,
    until_disconnected,
)
from hpcgate.api.multipart import multipart_file
from hpcgate.api.routes.files import files_of, user_path
from hpcgate.errors import BadRequest, Forbidden, GatewayError, NotLoggedIn
from hpcgate.files import FileEntry
from hpcgate.jobspec import parse_jobid, parse_submission
from hpcgate.schedulers.base import JobRecord, Phase
from hpcgate.services.events import ENDED, EventFilter, EventService
from hpcgate.services.files import FileService
from hpcgate.web import i18n
from hpcgate.web.forms import (
    JOBCONF_FIELDS,
    JOBFILE,
    SCRIPT_PATH,
    TEMPLATES,
    field_of,
    submission_fields,
)
from hpcgate.web.security import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    csrf_token,
    new_login_token,
    same_token,
)
from hpcgate.web.templates import PREFIX, Visitor, language_choice, render

router = APIRouter(include_in_schema=False)

Handler = Callable[..., Awaitable[Response]]

# How often a page asks again when no event stream tells it something changed.
MIN_POLL = 2.0
MAX_POLL = 30.0
SAFETY_POLL = 60.0
"""With the event stream, a slow poll all the same (an event missed while reconnecting)."""
EVENT_NAMES = ["message"]
"""The event stream's event names that mean "a job changed" (wire to issue 14's names)."""


# -- who is asking --------------------------------------------------------------------


async def visitor_of(request: Request) -> Visitor:
    """The visitor: logged in through the API's session cookie, or not."""
    gw = gateway(request)
    language = i18n.negotiate(language_choice(request), request.headers.get("accept-language"))
    token = request.cookies.get(COOKIE_NAME)
    machines = list(gw.machines)
    try:
        account, _ = await gw.login.account_for(token)
    except NotLoggedIn:
        login_csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_token()
        return Visitor(None, language, login_csrf, machines)
    assert token is not None
    return Visitor(account, language, csrf_token(token), machines)


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)


def local_target(raw: object, default: str) -> str:
    """A redirect target from a form: only a path of the dashboard itself."""
    if not isinstance(raw, str) or not raw.startswith(PREFIX + "/"):
        return default
    return default if "//" in raw or "\\" in raw else raw


async def checked_form(request: Request, visitor: Visitor) -> dict[str, Any]:
    """The fields of a form that changes something, once the origin and CSRF checks pass."""
    if not same_origin(request):
        raise Forbidden("cross-site request refused: use this gateway's own pages")
    fields = await read_fields(request)
    if not same_token(visitor.csrf, fields.get(CSRF_FIELD)):
        raise Forbidden("the form has expired or did not come from this page: reload and retry")
    return fields


def error_page(request: Request, visitor: Visitor, error: GatewayError) -> Response:
    return render(
        request, visitor, "error.html", status_code=error.status_code, message=error.message
    )


def page(handler: Handler) -> Handler:
    """A page that needs a login: the visitor is passed in; a visitor who is not logged in
    goes to the login page, and a refusal from a service becomes an error page."""

    async def wrapped(request: Request, **params: Any) -> Response:
        visitor = await visitor_of(request)
        if visitor.account is None:
            return to_login(request)
        try:
            return await handler(request, visitor, **params)
        except NotLoggedIn:
            return to_login(request)
        except GatewayError as error:
            return error_page(request, visitor, error)

    functools.update_wrapper(wrapped, handler)
    # FastAPI reads the path parameters from the signature: the handler's, less the visitor
    signature = inspect.signature(handler, eval_str=True)
    wrapped.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "visitor"]
    )
    return wrapped


def api_serves(request: Request, path: str) -> bool:
    """Whether this gateway has an API route for ``GET path``: parts of the dashboard that
    need an API still being built show "not available" until it is there."""
    known: dict[str, bool] = request.app.state.__dict__.setdefault("web_api_serves", {})
    if path not in known:
        probe = {**request.scope, "method": "GET", "path": path, "root_path": ""}
        known[path] = any(
            route.matches(probe)[0] == Match.FULL for route in request.app.router.routes
        )
    return known[path]


def event_service(request: Request) -> EventService | None:
    """The job events (issue 14), when this gateway serves them."""
    service = getattr(gateway(request), "events", None)
    if not isinstance(service, EventService) or not service.config.enabled:
        return None
    if not api_serves(request, "/api/events"):
        return None
    return service


def has_events(request: Request) -> bool:
    return event_service(request) is not None


def has_job_output(request: Request) -> bool:
    return api_serves(request, "/api/job/any/1/output")


# -- log in, log out, language ----------------------------------------------------------


@router.get(PREFIX)
@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=303)


@router.get(f"{PREFIX}/login")
async def login_form(request: Request) -> Response:
    visitor = await visitor_of(request)
    next_page = local_target(request.query_params.get("next"), f"{PREFIX}/")
    if visitor.account is not None:
        return RedirectResponse(next_page, status_code=303)
    return login_page(request, visitor, next_page)


def login_page(
    request: Request, visitor: Visitor, next_page: str, *, error: str = "", status: int = 200
) -> Response:
    response = render(
        request,
        visitor,
        "login.html",
        status_code=status,
        next_page=next_page,
        error=error,
        max_username=contract.max_length(contract.LOGIN, "username"),
        max_password=contract.max_length(contract.LOGIN, "password"),
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        visitor.csrf,
        path=f"{PREFIX}/login",
        httponly=True,
        samesite="strict",
        secure=gateway(request).config.auth.cookie_secure,
    )
    return response


@router.post(f"{PREFIX}/login")
async def login(request: Request) -> Response:
    visitor = await visitor_of(request)
    gw = gateway(request)
    try:
        fields = await checked_form(request, visitor)
    except GatewayError as error:
        return error_page(request, visitor, error)
    next_page = local_target(fields.get("next"), f"{PREFIX}/")
    username = fields.get("username")
    password = fields.get("password")
    t = visitor.t
    if not isinstance(username, str) or not username or not isinstance(password, str):
        return login_page(request, visitor, next_page, error=t("login_missing"), status=400)
    request.state.audit_user = username
    try:
        token, _, _ = await gw.login.login(username, password, client_address(request))
    except NotLoggedIn:
        return login_page(request, visitor, next_page, error=t("login_refused"), status=401)
    except GatewayError as error:  # 429 after repeated failures, 503 ...
        status = error.status_code
        return login_page(request, visitor, next_page, error=error.message, status=status)
    response = RedirectResponse(next_page, status_code=303)
    # The API's own session cookie, set exactly as POST /api/auth sets it.
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=gw.config.auth.session_lifetime,
        path="/",
        httponly=True,
        samesite="strict",
        secure=gw.config.auth.cookie_secure,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=f"{PREFIX}/login")
    return response


@router.post(f"{PREFIX}/logout")
async def logout(request: Request) -> Response:
    visitor = await visitor_of(request)
    if visitor.account is not None:
        try:
            await checked_form(request, visitor)
        except GatewayError as error:
            return error_page(request, visitor, error)
        await gateway(request).login.logout(request.cookies.get(COOKIE_NAME))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


# -- clusters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionNodes:
    name: str
    states: list[tuple[str, int]]
    total: int


@router.get(f"{PREFIX}/")
async def clusters(request: Request) -> Response:
    """Every machine: queue counts, nodes per partition, health, probe time, age."""
    visitor = await visitor_of(request)
    gw = gateway(request)
    if visitor.account is None and not gw.config.status.public:
        return to_login(request)
    try:
        _, build = await gw.status.current()
    except GatewayError as error:
        return error_page(request, visitor, error)
    now = time.time()
    machines = []
    for name, entry in build().items():
        updated = entry.get("updated")
        queue = dict(entry.get("queue", {}))
        machines.append(
            {
                "name": name,
                "description": gw.config.machines[name].description
                if name in gw.config.machines
                else "",
                "probe_time": queue.pop("time", None),
                "health": queue.pop("health", None),
                "queue": sorted(queue.items()),
                "partitions": [
                    PartitionNodes(part, sorted(states.items()), sum(states.values()))
                    for part, states in sorted(entry.get("info", {}).items())
                ],
                "updated": updated,
                "age": None
                if updated is None
                else max(0, round(now - contract.parse_timestamp(updated).timestamp())),
                "stale": entry.get("stale", False),
                "error": entry.get("error", ""),
            }
        )
    return render(request, visitor, "clusters.html", machines=machines, section="clusters")


# -- my jobs ----------------------------------------------------------------------------

SORT_KEYS: dict[str, Callable[[JobRecord], Any]] = {
    "id": lambda job: tuple(int(part) for part in job.id.replace("+", "_").split("_")),
    "state": lambda job: job.status,
    "name": lambda job: job.name.lower(),
    "partition": lambda job: job.partition,
    "nodes": lambda job: job.nodes,
    "time": lambda job: _seconds(job.elapsed),
}
PHASES = [phase.value for phase in Phase if phase is not Phase.FINISHED]


def _seconds(elapsed: str) -> int:
    """Slurm's ``[days-]hours:minutes:seconds`` (or shorter) as seconds, for sorting."""
    days, _, clock = elapsed.rpartition("-")
    total = 0
    for part in clock.split(":"):
        total = total * 60 + (int(part) if part.isdigit() else 0)
    return total + (int(days) * 86400 if days.isdigit() else 0)


@dataclass(frozen=True)
class ListingView:
    """The filter and order of a listing, as its URL says."""

    text: str
    phase: str
    sort: str
    descending: bool

    @classmethod
    def of(cls, request: Request) -> ListingView:
        params = request.query_params
        sort = params.get("sort", "id")
        phase = params.get("state", "")
        return cls(
            text=params.get("q", "")[:200],
            phase=phase if phase in PHASES else "",
            sort=sort if sort in SORT_KEYS else "id",
            descending=params.get("order") == "desc",
        )

    def apply(self, jobs: list[JobRecord]) -> list[JobRecord]:
        needle = self.text.casefold()
        chosen = [
            job
            for job in jobs
            if (not self.phase or (job.phase is not None and job.phase.value == self.phase))
            and (
                not needle
                or needle in job.name.casefold()
                or needle in job.id
                or needle in job.partition.casefold()
            )
        ]
        with contextlib.suppress(ValueError):  # an id printed oddly: keep the order
            chosen.sort(key=SORT_KEYS[self.sort], reverse=self.descending)
        return chosen

    def query(self, **changes: str) -> str:
        params = {"q": self.text, "state": self.phase, "sort": self.sort}
        params["order"] = "desc" if self.descending else "asc"
        params.update(changes)
        return urlencode({k: v for k, v in params.items() if v})


def next_poll(request: Request, age: float) -> float:
    """Seconds until the next look at a listing: when the monitors' next snapshot is due
    (the listing is ``age`` seconds old), between MIN_POLL and MAX_POLL."""
    interval = gateway(request).config.monitor.interval
    return round(min(MAX_POLL, max(MIN_POLL, interval - age + 0.5)), 1)


async def listing_context(request: Request, visitor: Visitor, name: str) -> dict[str, Any]:
    assert visitor.account is not None
    target = gateway(request).machine(name)
    listing = await target.queue(visitor.account)
    view = ListingView.of(request)
    age = max(0.0, time.time() - listing.taken)
    events = has_events(request)
    return {
        "finished": await recently_finished(request, visitor.account, name),
        "machine": name,
        "jobs": view.apply(listing.jobs),
        "total": len(listing.jobs),
        "view": view,
        "age": round(age),
        # A live listing (after the user's own submit or kill) may show a job between
        # states, e.g. completing, with no event to follow: look again at the next snapshot.
        "poll": SAFETY_POLL if events and listing.from_snapshot else next_poll(request, age),
        "events": events,
        "event_names": EVENT_NAMES,
        "section": "jobs",
    }


FINISHED_SHOWN = 20
FINISHED_SCANNED = 2000


@dataclass(frozen=True)
class Finished:
    """A job that ended recently, as its last event tells."""

    jobid: str
    name: str
    state: str
    exit_code: str
    ended: str


async def recently_finished(
    request: Request, account: UnixAccount, name: str
) -> list[Finished] | None:
    """The user's jobs on ``name`` that ended lately, newest first, from the job events
    (None when this gateway keeps none)."""
    service = event_service(request)
    if service is None:
        return None
    events = await service.read(account.uid, None, EventFilter(machine=name), FINISHED_SCANNED)
    ended: dict[str, Finished] = {}
    for event in events:
        data = event.data
        if event.kind != ENDED and data.get("exit_code") is None and "ended" not in data:
            continue
        code = data.get("exit_code")
        signal = data.get("signal")
        ended.pop(event.jobid, None)  # keep the newest, last
        ended[event.jobid] = Finished(
            jobid=event.jobid,
            name=str(data.get("name", "")),
            state=str(data.get("state") or event.kind).capitalize(),
            exit_code="" if code is None else f"{code}:{signal or 0}",
            ended=str(data.get("ended", "")),
        )
    return list(reversed(ended.values()))[:FINISHED_SHOWN]


@router.get(f"{PREFIX}/m/{{name}}/jobs")
@page
async def my_jobs(request: Request, visitor: Visitor, name: str) -> Response:
    """The user's jobs on one machine, filtered and sorted by the URL, updated live."""
    context = await listing_context(request, visitor, name)
    return render(request, visitor, "jobs.html", **context)


@router.get(f"{PREFIX}/m/{{name}}/jobs/rows")
@page
async def my_job_rows(request: Request, visitor: Visitor, name: str) -> Response:
    """The rows of the listing alone, for the page's live updates."""
    context = await listing_context(request, visitor, name)
    return render(request, visitor, "job_rows.html", **context)


# -- one job ----------------------------------------------------------------------------


async def job_context(request: Request, visitor: Visitor, name: str, jobid: str) -> dict[str, Any]:
    assert visitor.account is not None
    target = gateway(request).machine(name)
    jobid = parse_jobid(jobid)
    rows = await target.job(visitor.account, jobid)
    job = rows[0]
    return {
        "machine": name,
        "jobid": jobid,
        "job": job,
        "steps": rows[1:],
        "running": not job.finished,
        "poll": 3,
        "output_url": f"/api/job/{name}/{jobid}/output" if has_job_output(request) else None,
        "section": "jobs",
    }


@router.get(f"{PREFIX}/m/{{name}}/jobs/{{jobid}}")
@page
async def job_page(request: Request, visitor: Visitor, name: str, jobid: str) -> Response:
    """One job: its state, steps and exit codes; its output when the gateway serves it."""
    return render(request, visitor, "job.html", **await job_context(request, visitor, name, jobid))


@router.get(f"{PREFIX}/m/{{name}}/jobs/{{jobid}}/summary")
@page
async def job_summary(request: Request, visitor: Visitor, name: str, jobid: str) -> Response:
    """The job's state and steps alone, for the page's live updates."""
    context = await job_context(request, visitor, name, jobid)
    return render(request, visitor, "job_summary.html", **context)


@router.post(f"{PREFIX}/m/{{name}}/jobs/{{jobid}}/kill")
@page
async def kill(request: Request, visitor: Visitor, name: str, jobid: str) -> Response:
    """Kill a job once confirmed (by the script's dialog, or by the confirmation page)."""
    assert visitor.account is not None
    fields = await checked_form(request, visitor)
    jobid = parse_jobid(jobid)
    back = local_target(fields.get("next"), f"{PREFIX}/m/{name}/jobs")
    if fields.get("confirmed") != "yes":
        return render(
            request, visitor, "kill.html", machine=name, jobid=jobid, back=back, section="jobs"
        )
    await gateway(request).machine(name).cancel(visitor.account, jobid)
    request.state.audit_jobid = jobid
    return RedirectResponse(back, status_code=303)


# -- submit -----------------------------------------------------------------------------


async def partitions_of(request: Request, name: str) -> list[str]:
    """The machine's partitions, as its monitor last saw them."""
    try:
        _, build = await gateway(request).status.current()
    except GatewayError:
        return []
    return sorted(build().get(name, {}).get("info", {}))


async def submit_page(
    request: Request,
    visitor: Visitor,
    name: str,
    values: dict[str, str],
    *,
    errors: dict[str, str] | None = None,
    general: str = "",
    status: int = 200,
) -> Response:
    return render(
        request,
        visitor,
        "submit.html",
        status_code=status,
        machine=name,
        values=values,
        errors=errors or {},
        general=general,
        fields=JOBCONF_FIELDS,
        script_path=SCRIPT_PATH,
        jobfile=JOBFILE,
        partitions=await partitions_of(request, name),
        templates=list(TEMPLATES),
        max_script_bytes=gateway(request).config.limits.script_bytes,
        section="submit",
    )


@router.get(f"{PREFIX}/m/{{name}}/submit")
@page
async def submit_form(request: Request, visitor: Visitor, name: str) -> Response:
    gateway(request).machine(name)  # an unknown machine is a 404 here already
    chosen = TEMPLATES.get(request.query_params.get("template", "serial"), TEMPLATES["serial"])
    values = {"jobscript": chosen.script, **chosen.values, "template": chosen.name}
    values["idempotency_key"] = uuid.uuid4().hex
    return await submit_page(request, visitor, name, values)


@router.post(f"{PREFIX}/m/{{name}}/submit")
@page
async def submit(request: Request, visitor: Visitor, name: str) -> Response:
    """Submit as ``POST /api/job/<machine>`` does (idempotently: the form carries a key,
    so a double click or a resent form submits once), then show the job."""
    assert visitor.account is not None
    fields = await checked_form(request, visitor)
    gw = gateway(request)
    target = gw.machine(name)
    values = {key: value for key, value in fields.items() if isinstance(value, str)}
    key = values.get("idempotency_key") or None
    try:
        submission = parse_submission(
            submission_fields(fields), max_script_bytes=gw.config.limits.script_bytes
        )
        jobid = await target.submit(visitor.account, submission, idempotency_key=key)
    except (BadRequest, Forbidden) as error:
        concerned = field_of(error.message)
        return await submit_page(
            request,
            visitor,
            name,
            values,
            errors={concerned: error.message} if concerned else {},
            general="" if concerned else error.message,
            status=error.status_code,
        )
    request.state.audit_jobid = jobid
    return RedirectResponse(f"{PREFIX}/m/{name}/jobs/{jobid}", status_code=303)


# -- command ----------------------------------------------------------------------------


@router.get(f"{PREFIX}/m/{{name}}/command")
@page
async def command_form(request: Request, visitor: Visitor, name: str) -> Response:
    gateway(request).machine(name)
    return render(
        request, visitor, "command.html", machine=name, line="", result=None, section="command"
    )


@router.post(f"{PREFIX}/m/{{name}}/command")
@page
async def command(request: Request, visitor: Visitor, name: str) -> Response:
    """Run a command line as ``POST /api/command/<machine>`` does; show what it printed."""
    assert visitor.account is not None
    fields = await checked_form(request, visitor)
    target = gateway(request).machine(name)
    line = fields.get("command")
    limit = contract.max_length(contract.COMMAND, "command")
    if not isinstance(line, str) or not line.strip() or len(line) > limit or "\x00" in line:
        raise BadRequest(f"give command as a non-empty line of at most {limit} characters")
    line = line.replace("\r\n", "\n")
    result = await until_disconnected(request, target.run_command(visitor.account, line))
    return render(
        request, visitor, "command.html", machine=name, line=line, result=result, section="command"
    )


# -- files ------------------------------------------------------------------------------

FILES_PAGE_SIZE = 100
"""Entries per page of a directory (at most the machine's own listing page size)."""
VIEW_LINES = 200
"""Lines of a text file shown by its page (its head, or its tail)."""
NOTICES = ("uploaded", "made", "deleted")


def files_url(name: str, path: str, **params: str) -> str:
    """The Files page of the absolute ``path`` on machine ``name``."""
    query = urlencode(params)
    return f"{PREFIX}/m/{name}/files{quote(path, safe='/')}" + (f"?{query}" if query else "")


def api_file_url(name: str, path: str) -> str:
    """The API route of ``path``: the page's download links are the API's own."""
    return f"/api/file/{name}{quote(path, safe='/')}"


def parent_of(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) or "/"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Crumb:
    label: str
    url: str


def breadcrumbs(name: str, path: str) -> list[Crumb]:
    """``/``, then each directory down to ``path``, each a link to its page."""
    crumbs = [Crumb("/", files_url(name, "/"))]
    walked = ""
    for part in path.split("/"):
        if part:
            walked += "/" + part
            crumbs.append(Crumb(part, files_url(name, walked)))
    return crumbs


@dataclass(frozen=True)
class EntryView:
    """One directory entry as the Files page shows it."""

    entry: FileEntry
    path: str
    machine: str

    @property
    def is_dir(self) -> bool:
        return self.entry.type == "dir" or self.entry.target_type == "dir"

    @property
    def is_file(self) -> bool:
        return self.entry.type == "file" or self.entry.target_type == "file"

    @property
    def url(self) -> str:
        return files_url(self.machine, self.path)

    @property
    def download(self) -> str:
        return api_file_url(self.machine, self.path) + "?download=true"

    @property
    def delete(self) -> str:
        return f"{PREFIX}/m/{self.machine}/delete{quote(self.path, safe='/')}"

    @property
    def size(self) -> str:
        return human_size(self.entry.size)

    @property
    def date(self) -> str:
        return self.entry.date.replace("T", " ").removesuffix("Z") + " UTC"


def notice_of(request: Request, visitor: Visitor) -> str:
    """The message of what the visitor just did (``?notice=&item=``), shown as a status."""
    notice = request.query_params.get("notice", "")
    if notice not in NOTICES:
        return ""
    return visitor.t(f"notice_{notice}", name=request.query_params.get("item", "")[:300])


def files_context(request: Request, visitor: Visitor, name: str, path: str) -> dict[str, Any]:
    return {
        "notice": notice_of(request, visitor),
        "machine": name,
        "location": path,
        "crumbs": breadcrumbs(name, path),
        "section": "files",
    }


@router.get(f"{PREFIX}/m/{{name}}/files")
@page
async def files_home(request: Request, visitor: Visitor, name: str) -> Response:
    """The Files page starts in the user's home directory."""
    assert visitor.account is not None
    gateway(request).machine(name)
    return RedirectResponse(files_url(name, visitor.account.home), status_code=303)


@router.get(f"{PREFIX}/m/{{name}}/files/{{path:filepath}}")
@page
async def files(request: Request, visitor: Visitor, name: str, path: str) -> Response:
    """A directory (paged listing, upload, make directory, delete) or a file (details,
    download, its first or last lines), read as ``GET /api/file/<machine>/<path>`` does."""
    account = visitor.account
    assert account is not None
    service = files_of(request, name)
    target = user_path(account, path)
    is_dir, own = await service.is_directory(account, target)
    context = files_context(request, visitor, name, target)
    if not is_dir:
        return await file_page(request, visitor, service, EntryView(own, target, name), context)
    raw_offset = request.query_params.get("offset", "")
    offset = int(raw_offset) if raw_offset.isdigit() else 0
    limit = min(FILES_PAGE_SIZE, service.limits.page_size)
    entries, total = await service.listing(account, target, limit=limit, offset=offset)
    here = target.rstrip("/")
    return render(
        request,
        visitor,
        "files.html",
        entries=[EntryView(entry, f"{here}/{entry.name}", name) for entry in entries],
        total=total,
        first=offset + 1,
        last=offset + len(entries),
        previous_url=files_url(name, target, offset=str(max(0, offset - limit)))
        if offset > 0
        else None,
        next_url=files_url(name, target, offset=str(offset + limit))
        if offset + limit < total
        else None,
        here_url=files_url(name, target),
        upload_url=f"{PREFIX}/m/{name}/upload{quote(target, safe='/')}?"
        + urlencode({CSRF_FIELD: visitor.csrf}),
        mkdir_url=f"{PREFIX}/m/{name}/mkdir{quote(target, safe='/')}",
        max_upload=human_size(service.limits.max_upload_bytes),
        **context,
    )


async def file_page(
    request: Request,
    visitor: Visitor,
    service: FileService,
    entry: EntryView,
    context: dict[str, Any],
) -> Response:
    """A file's details, download link and first (or last) lines."""
    assert visitor.account is not None
    tail = request.query_params.get("view") == "tail"
    text: str | None = None
    problem = ""
    try:
        text = await service.head(visitor.account, entry.path, VIEW_LINES, tail=tail)
    except BadRequest as error:  # a directory link gone dangling, a FIFO, a device
        problem = error.message
    if text is not None and "\0" in text:
        text, problem = None, visitor.t("file_binary")
    return render(
        request,
        visitor,
        "file.html",
        entry=entry,
        tail=tail,
        lines=VIEW_LINES,
        text=text,
        problem=problem,
        head_url=files_url(entry.machine, entry.path),
        tail_url=files_url(entry.machine, entry.path, view="tail"),
        **context,
    )


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


@router.post(f"{PREFIX}/m/{{name}}/upload/{{path:filepath}}")
@page
async def upload(request: Request, visitor: Visitor, name: str, path: str) -> Response:
    """A file from the upload form (``multipart/form-data``, field ``file``) streamed into
    the directory ``path`` as ``POST /api/file/<machine>/<dir>`` does. The CSRF token is in
    the form's URL (the body is streamed to the machine as it arrives, file part first or
    not). The page's script asks for JSON, to show the progress and stay on the page."""
    account = visitor.account
    assert account is not None
    try:
        if not same_origin(request):
            raise Forbidden("cross-site request refused: use this gateway's own pages")
        if not same_token(visitor.csrf, request.query_params.get(CSRF_FIELD)):
            raise Forbidden("the form has expired or did not come from this page: reload and retry")
        service = files_of(request, name)
        directory = user_path(account, path)
        filename, chunks = await multipart_file(request, service.limits.max_upload_bytes)
        destination = directory.rstrip("/") + "/" + filename
        request.state.audit_path = destination
        size = await service.upload(account, destination, chunks)
    except GatewayError as error:
        if wants_json(request):
            return JSONResponse({"error": error.message}, status_code=error.status_code)
        raise
    if wants_json(request):
        return JSONResponse({"location": destination, "name": filename, "size": size})
    return RedirectResponse(
        files_url(name, directory, notice="uploaded", item=filename), status_code=303
    )


@router.post(f"{PREFIX}/m/{{name}}/mkdir/{{path:filepath}}")
@page
async def make_directory(request: Request, visitor: Visitor, name: str, path: str) -> Response:
    """Make the directory named by the form in the directory ``path``."""
    account = visitor.account
    assert account is not None
    fields = await checked_form(request, visitor)
    service = files_of(request, name)
    directory = user_path(account, path)
    new = fields.get("dirname")
    if not isinstance(new, str) or not new or "/" in new or new in (".", ".."):
        raise BadRequest(visitor.t("dirname_invalid"))
    made = directory.rstrip("/") + "/" + new
    request.state.audit_path = made
    await service.mkdir(account, made)
    return RedirectResponse(files_url(name, directory, notice="made", item=new), status_code=303)


@router.post(f"{PREFIX}/m/{{name}}/delete/{{path:filepath}}")
@page
async def delete(request: Request, visitor: Visitor, name: str, path: str) -> Response:
    """Delete a file, or a directory and what it holds, once confirmed (by the script's
    dialog, or by the confirmation page)."""
    account = visitor.account
    assert account is not None
    fields = await checked_form(request, visitor)
    service = files_of(request, name)
    target = user_path(account, path)
    if fields.get("confirmed") != "yes":
        own = await service.entry(account, target)  # a link is removed, not what it leads to
        return render(
            request,
            visitor,
            "file_delete.html",
            entry=EntryView(own, target, name),
            is_dir=own.type == "dir",
            back=files_url(name, parent_of(target)),
            **files_context(request, visitor, name, target),
        )
    request.state.audit_path = target
    await service.remove(account, target, recursive=fields.get("recursive") == "yes")
    item = posixpath.basename(target.rstrip("/"))
    return RedirectResponse(
        files_url(name, parent_of(target), notice="deleted", item=item), status_code=303
    )
