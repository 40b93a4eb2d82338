"""Every API call once, without I/O: the request to send and how to read the answer.

:class:`~hpcgate.client.Client` and :class:`~hpcgate.client.AsyncClient` only send these.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from hpcgate import contract
from hpcgate.client import models
from hpcgate.client.errors import error_for

T = TypeVar("T")

# Python-friendly names for the spec's jobconf keys; the spec's own names work too.
JOBCONF_NAMES = {spec.option: key for key, spec in contract.JOBCONF.items()}
JOBCONF_KEYS = frozenset(contract.JOBCONF)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the parser of its envelope's ``output``."""

    method: str
    path: str
    parse: Callable[[Any], T]
    data: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    idempotent: bool = False
    """Safe to send again after a connection error or a 503."""
    paged: bool = False
    """``parse`` also takes the total a paged listing's ``X-Total-Count`` header gives."""

    def result(self, response: httpx.Response) -> T:
        """What ``parse`` makes of the answer (raises the error class of a failed call)."""
        output = output_of(response)
        if self.paged:
            total = int(response.headers.get("x-total-count", len(output)))
            return self.parse((output, total))
        return self.parse(output)


def output_of(response: httpx.Response) -> Any:
    """The envelope's ``output``; raises the error class for a failed call."""
    try:
        body = response.json()
    except ValueError:
        raise error_for(response.status_code, response.text[:200]) from None
    if not isinstance(body, dict) or "status" not in body:
        raise error_for(response.status_code, f"not an hpcgate answer: {response.text[:200]}")
    if response.status_code != 200 or body.get("status") != "OK":
        raise error_for(response.status_code, str(body.get("error", "")))
    return body.get("output")


def login(username: str, password: str) -> Call[str]:
    return Call(
        "POST",
        "/auth",
        lambda out: str(out["token"]),
        data={"username": username, "password": password},
    )


def logout() -> Call[None]:
    return Call("DELETE", "/auth", lambda out: None, idempotent=True)


def whoami() -> Call[str | None]:
    return Call("GET", "/auth", lambda out: out.get("username"), idempotent=True)


def run(machine: str, command: str) -> Call[models.CommandResult]:
    return Call(
        "POST",
        f"/command/{machine}",
        lambda out: models.CommandResult(out["output"], out["error"], int(out["retcode"])),
        data={"command": command},
    )


def jobconf(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword options (``name=``, ``time=``, ... or the spec's keys) as a jobconf."""
    conf: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        spec_key = JOBCONF_NAMES.get(key, key)
        if spec_key not in JOBCONF_KEYS:
            known = ", ".join(sorted(JOBCONF_NAMES))
            raise TypeError(f"unknown job option {key!r}; options: {known}")
        conf[spec_key] = value
    return conf


def submit(
    machine: str,
    *,
    script: str | None = None,
    path: str | None = None,
    remote_file: str | None = None,
    idempotency_key: str | None = None,
    options: dict[str, Any],
) -> Call[str]:
    """Submit ``script`` (text; written to ``path`` or ~/newt) or ``remote_file``."""
    if (script is None) == (remote_file is None):
        raise TypeError("give either script= (the script's text) or remote_file= (a path)")
    if remote_file is not None and path is not None:
        raise TypeError("path= is where script= is written; it does not go with remote_file=")
    data: dict[str, Any] = {}
    if script is not None:
        data["jobscript"] = script
        if path is not None:
            data["jobfilepath"] = path
    else:
        data["jobfile"] = remote_file
    conf = jobconf(options)
    if conf:
        data["jobconf"] = json.dumps(conf)
    # One key per submit, reused by every retry of it: the gateway submits at most once.
    return Call(
        "POST",
        f"/job/{machine}",
        lambda out: str(out["jobid"]),
        data=data,
        headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
        idempotent=True,
    )


def queue(machine: str) -> Call[list[models.Job]]:
    return Call("GET", f"/job/{machine}", models.queue_from_columns, idempotent=True)


def job(machine: str, jobid: str) -> Call[models.Job]:
    jobid = str(jobid)
    return Call(
        "GET",
        f"/job/{machine}/{jobid}",
        lambda out: models.job_from_columns(jobid, out),
        idempotent=True,
    )


def cancel(machine: str, jobid: str) -> Call[None]:
    return Call("DELETE", f"/job/{machine}/{jobid}", lambda out: None)


def status() -> Call[list[models.MachineStatus]]:
    return Call("GET", "/job", models.status_from_output, idempotent=True)
