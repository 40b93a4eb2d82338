"""The request contract, written once: form fields, jobconf keys, patterns, timestamps.

The server's checks (:mod:`hpcgate.jobspec`, the login and command routes), the OpenAPI
document (:mod:`hpcgate.api.schemas`) and the client's option table
(:mod:`hpcgate.client.calls`) are all derived from what is declared here;
``tests/test_contract.py`` fails when one of them drifts. Standard library only: the
client imports this module too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

# Patterns are written for both Python and JSON Schema (ECMA-262): keep them to that subset.
JOBID_PATTERN = r"^[1-9][0-9]{0,9}([_+][0-9]{1,9})?$"
"""A job id as the scheduler knows it: digits (no 0, at most 10 of them), an array task
``123_4`` or a heterogeneous job's component ``123+1``."""
USERNAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,255}$"
MACHINE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PARTITION_PATTERN = r"^[A-Za-z0-9_.+-]+$"

MAX_PATH = 4096


def strict(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled so that its final ``$`` ends the text (Python's ``$`` also
    matches before a trailing newline, JSON Schema's does not)."""
    return re.compile(pattern.removesuffix("$") + r"\Z")


JOBID = strict(JOBID_PATTERN)
USERNAME = strict(USERNAME_PATTERN)
MACHINE_NAME = strict(MACHINE_NAME_PATTERN)


@dataclass(frozen=True)
class Text:
    """A string: its length bounds and, for names, the pattern it must match."""

    min_length: int = 1
    max_length: int | None = None
    pattern: str | None = None
    allowed: str = ""
    """What ``pattern`` allows, in words, for error messages."""


@dataclass(frozen=True)
class WholeNumber:
    """An integer from ``minimum`` to ``maximum``."""

    maximum: int
    minimum: int = 1


@dataclass(frozen=True)
class Gigabytes:
    """A number of gigabytes, more than 0 and at most ``maximum``."""

    maximum: int


@dataclass(frozen=True)
class Arguments:
    """Arguments for a program: a string split like a shell would, or a list of strings."""

    max_items: int


@dataclass(frozen=True)
class JobconfObject:
    """The ``jobconf`` field: an object of :data:`JOBCONF` keys, or a JSON string of one."""


Value = Text | WholeNumber | Gigabytes | Arguments


@dataclass(frozen=True)
class JobconfKey:
    """One ``jobconf`` key: its value, what it means, and the client's keyword for it."""

    value: Value
    meaning: str
    option: str


JOBCONF_MEANING = "Optional job parameters; only the keys you set are passed to the scheduler."
JOBCONF: dict[str, JobconfKey] = {
    "job_wdir": JobconfKey(Text(max_length=MAX_PATH), "working directory", "workdir"),
    "job_name": JobconfKey(Text(max_length=200), "job name", "name"),
    "time_limit": JobconfKey(WholeNumber(366 * 24 * 60), "run-time limit, minutes", "time"),
    "partition": JobconfKey(
        Text(max_length=64, pattern=PARTITION_PATTERN, allowed="letters, digits and _ . + -"),
        "partition",
        "partition",
    ),
    "scale_cores": JobconfKey(WholeNumber(10_000_000), "number of cores (tasks)", "cores"),
    "scale_memGB": JobconfKey(Gigabytes(1_000_000), "memory per node, GB", "mem_gb"),
    "scale_Nodes": JobconfKey(WholeNumber(1_000_000), "number of nodes", "nodes"),
    "jobfile_args": JobconfKey(Arguments(1000), "arguments after the script", "args"),
}
"""The spec's ``jobconf`` keys, in the spec's order."""


@dataclass(frozen=True)
class FormField:
    """A field of a request body (form-encoded or JSON)."""

    value: Text | JobconfObject
    meaning: str | None = None
    required: bool = False
    example: str | None = None


@dataclass(frozen=True)
class Form:
    """The body of one route."""

    name: str
    meaning: str | None
    fields: dict[str, FormField]


# An empty jobscript, jobfilepath or jobfile counts as not given, hence min_length=0.
SUBMIT = Form(
    "SubmitBody",
    "Either jobscript (+ optional jobfilepath) or jobfile. Form fields or JSON.",
    {
        "jobscript": FormField(Text(min_length=0), example="#!/bin/bash\necho hello\n"),
        "jobfilepath": FormField(
            Text(min_length=0, max_length=MAX_PATH),
            "where to write jobscript; default ~/newt/<generated>.sh",
        ),
        "jobfile": FormField(
            Text(min_length=0, max_length=MAX_PATH), "a script already on the machine"
        ),
        "jobconf": FormField(
            JobconfObject(), "a JSON object, or (form-encoded) a JSON string of one"
        ),
        "notify_url": FormField(
            Text(min_length=0, max_length=2048),
            "an http(s) URL to POST this job's events to (a signed webhook for this job)",
        ),
    },
)
KILL = Form(
    "KillBody",
    None,
    {"jobid": FormField(Text(pattern=JOBID_PATTERN), required=True, example="4816214")},
)
LOGIN = Form(
    "LoginBody",
    None,
    {
        "username": FormField(
            Text(max_length=256, pattern=USERNAME_PATTERN), required=True, example="alice"
        ),
        "password": FormField(Text(max_length=4096), required=True, example="wonderland"),
    },
)
COMMAND = Form(
    "CommandBody",
    None,
    {
        "command": FormField(
            Text(max_length=128 * 1024),
            "a command line, run by the user's own shell",
            required=True,
            example="ls /root",
        )
    },
)


def text_rule(form: Form, name: str) -> Text:
    """The rule for text field ``name`` of ``form``."""
    value = form.fields[name].value
    if not isinstance(value, Text):
        raise LookupError(f"{form.name}.{name} is not a text field")
    return value


def max_length(form: Form, name: str) -> int:
    """The longest value the contract allows for text field ``name`` of ``form``."""
    limit = text_rule(form, name).max_length
    if limit is None:
        raise LookupError(f"{form.name}.{name} has no maximum length")
    return limit


# Two timestamp formats are on the wire, both UTC with a final Z; each stays as it is.
SESSION_EXPIRY_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""Whole seconds: ``expires`` in the answers of ``/api/auth``."""
DATA_TAKEN_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""Microseconds: ``updated`` in ``GET /api/job`` and the ``X-Data-Taken`` header."""


def session_expiry(epoch: float) -> str:
    """When a session ends, as ``/api/auth`` says it: ``2026-11-27T12:00:00Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime(SESSION_EXPIRY_FORMAT)


def data_taken(epoch: float) -> str:
    """When status or queue data was read: ``2026-11-27T00:30:01.123456Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime(DATA_TAKEN_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """Either wire timestamp as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
