"""What a user asks of a job, validated: the spec's ``jobconf`` and the submit fields.

Everything here is pure: it turns untrusted request fields into typed values or raises
BadRequest with a message that names the field and says what is allowed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcgate import contract
from hpcgate.errors import BadRequest

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class JobOptions:
    """The scheduler-independent options of a batch job (the spec's ``jobconf``)."""

    working_dir: str | None = None
    name: str | None = None
    time_limit_minutes: int | None = None
    partition: str | None = None
    cores: int | None = None
    memory_mb: int | None = None
    nodes: int | None = None
    script_args: tuple[str, ...] = field(default=())
    tag: str | None = None
    """Set by the gateway, never from a request: a mark the scheduler keeps with the job
    (Slurm: its comment), by which a retried keyed submit finds the job."""


@dataclass(frozen=True)
class Submission:
    """A submit request: either a script to write (and where), or an existing script."""

    options: JobOptions
    script: str | None = None
    script_path: str | None = None
    jobfile: str | None = None
    notify_url: str | None = None
    """Where to POST this job's events (checked against the allow-list by the webhooks)."""


def _text(key: str, value: Any, rule: contract.Text) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string, not {type(value).__name__}")
    if len(value) < rule.min_length:
        raise BadRequest(
            f"{key} must not be empty"
            if rule.min_length == 1
            else f"{key} is shorter than {rule.min_length} characters"
        )
    if rule.max_length is not None and len(value) > rule.max_length:
        raise BadRequest(f"{key} is longer than {rule.max_length} characters")
    if _CONTROL.search(value):
        raise BadRequest(f"{key} must not contain control characters (newline, tab, NUL, ...)")
    if rule.pattern is not None and not contract.strict(rule.pattern).match(value):
        raise BadRequest(f"{key} may hold only {rule.allowed}, not {value!r}")
    return value


def _whole_number(key: str, value: Any, rule: contract.WholeNumber) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be a whole number, not {value!r}")
    if not rule.minimum <= value <= rule.maximum:
        raise BadRequest(f"{key} must be between {rule.minimum} and {rule.maximum}, not {value}")
    return value


def _megabytes(key: str, value: Any, rule: contract.Gigabytes) -> int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"{key} must be a number of gigabytes, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadRequest(f"{key} must be a number of gigabytes, not {value!r}")
    if not 0 < value <= rule.maximum:
        raise BadRequest(f"{key} must be more than 0 and at most {rule.maximum}, not {value}")
    return max(1, round(value * 1024))


def _arguments(key: str, value: Any, rule: contract.Arguments) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            args = shlex.split(value)
        except ValueError as exc:
            raise BadRequest(f"{key} cannot be split into arguments: {exc}") from None
    elif isinstance(value, list):
        args = value
    else:
        raise BadRequest(f"{key} must be a string or a list of strings")
    if len(args) > rule.max_items:
        raise BadRequest(f"{key} has more than {rule.max_items} arguments")
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            raise BadRequest(f"{key}[{index}] must be a string, not {type(arg).__name__}")
        if _CONTROL.search(arg):
            raise BadRequest(f"{key}[{index}] must not contain control characters")
    return tuple(args)


def _jobconf_value(key: str, value: Any) -> Any:
    """``value`` of jobconf ``key`` checked against the contract, as JobOptions holds it."""
    rule = contract.JOBCONF[key].value
    match rule:
        case contract.Text():
            return _text(key, value, rule)
        case contract.WholeNumber():
            return _whole_number(key, value, rule)
        case contract.Gigabytes():
            return _megabytes(key, value, rule)
        case contract.Arguments():
            return _arguments(key, value, rule)


# Which JobOptions field each jobconf key fills.
_OPTION_FIELDS = {
    "job_wdir": "working_dir",
    "job_name": "name",
    "time_limit": "time_limit_minutes",
    "partition": "partition",
    "scale_cores": "cores",
    "scale_memGB": "memory_mb",
    "scale_Nodes": "nodes",
    "jobfile_args": "script_args",
}


def parse_jobconf(raw: Any) -> JobOptions:
    """Validate a ``jobconf`` (a JSON object, a JSON string of one, or nothing)."""
    if raw is None or raw == "":
        return JobOptions()
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"jobconf is not valid JSON: {exc}") from None
        except RecursionError:  # nested deeper than the parser's stack
            raise BadRequest("jobconf nests JSON too deeply; it is a flat JSON object") from None
    if not isinstance(raw, Mapping):
        raise BadRequest('jobconf must be a JSON object such as {"job_name": "hello"}')
    unknown = [key for key in raw if key not in contract.JOBCONF]
    if unknown:
        raise BadRequest(
            f"unknown jobconf key {unknown[0]!r}; the keys are {', '.join(contract.JOBCONF)}"
        )
    # Checked in the contract's order, so the first complaint does not depend on the body's.
    options = {
        _OPTION_FIELDS[key]: _jobconf_value(key, raw[key])
        for key in contract.JOBCONF
        if raw.get(key) is not None
    }
    return JobOptions(**options)


def _submit_text(key: str, value: Any) -> str:
    return _text(key, value, contract.text_rule(contract.SUBMIT, key))


def parse_submission(fields: Mapping[str, Any], *, max_script_bytes: int) -> Submission:
    """Validate the fields of ``POST /api/job/<machine>``."""
    script = fields.get("jobscript") or None
    jobfile = fields.get("jobfile") or None
    script_path = fields.get("jobfilepath") or None
    if script is not None and jobfile is not None:
        raise BadRequest(
            "give either jobscript (the script's text) or jobfile (a script already on the "
            "machine), not both"
        )
    if script is None and jobfile is None:
        raise BadRequest(
            "nothing to submit: give jobscript (the script's text, optionally with "
            "jobfilepath) or jobfile (the path of a script on the machine)"
        )
    if jobfile is not None and script_path is not None:
        raise BadRequest(
            "jobfilepath goes with jobscript; with jobfile, the script is already there"
        )
    options = parse_jobconf(fields.get("jobconf"))
    notify_url = fields.get("notify_url") or None
    if notify_url is not None:
        notify_url = _submit_text("notify_url", notify_url)
        if not notify_url.lower().startswith(("http://", "https://")):
            raise BadRequest("notify_url must be an http:// or https:// URL")
    if jobfile is not None:
        return Submission(
            options=options, jobfile=_submit_text("jobfile", jobfile), notify_url=notify_url
        )
    if not isinstance(script, str):
        raise BadRequest("jobscript must be the script's text")
    if "\x00" in script:
        raise BadRequest("jobscript must not contain NUL characters")
    if len(script.encode()) > max_script_bytes:
        raise BadRequest(f"jobscript is larger than {max_script_bytes} bytes")
    if not script.startswith("#!"):
        raise BadRequest("jobscript must start with an interpreter line such as #!/bin/bash")
    return Submission(
        options=options,
        script=script,
        script_path=_submit_text("jobfilepath", script_path) if script_path is not None else None,
        notify_url=notify_url,
    )


def parse_jobid(raw: Any) -> str:
    """A job id as the scheduler knows it: digits, an array task ``123_4`` or a
    heterogeneous job's component ``123+1``."""
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise BadRequest("give the job id as jobid, e.g. jobid=4816214")
    jobid = str(raw).strip()
    if not contract.JOBID.match(jobid):
        raise BadRequest(f"{jobid[:40]!r} is not a job id; a job id looks like 4816214")
    return jobid
