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

from hpcgate.errors import BadRequest

MAX_PATH = 4096
MAX_NAME = 200
MAX_TIME_MINUTES = 366 * 24 * 60
MAX_CORES = 10_000_000
MAX_NODES = 1_000_000
MAX_MEMORY_GB = 1_000_000
MAX_ARGS = 1000
PARTITION_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
JOBID_PATTERN = re.compile(r"^[0-9]{1,12}(_[0-9]{1,9})?$")
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


@dataclass(frozen=True)
class Submission:
    """A submit request: either a script to write (and where), or an existing script."""

    options: JobOptions
    script: str | None = None
    script_path: str | None = None
    jobfile: str | None = None


def _text(key: str, value: Any, *, max_length: int = MAX_PATH) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string, not {type(value).__name__}")
    if not value:
        raise BadRequest(f"{key} must not be empty")
    if len(value) > max_length:
        raise BadRequest(f"{key} is longer than {max_length} characters")
    if _CONTROL.search(value):
        raise BadRequest(f"{key} must not contain control characters (newline, tab, NUL, ...)")
    return value


def _whole_number(key: str, value: Any, *, maximum: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be a whole number, not {value!r}")
    if not 1 <= value <= maximum:
        raise BadRequest(f"{key} must be between 1 and {maximum}, not {value}")
    return value


def _memory_mb(key: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"{key} must be a number of gigabytes, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadRequest(f"{key} must be a number of gigabytes, not {value!r}")
    if not 0 < value <= MAX_MEMORY_GB:
        raise BadRequest(f"{key} must be more than 0 and at most {MAX_MEMORY_GB}, not {value}")
    return max(1, round(value * 1024))


def _arguments(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            args = shlex.split(value)
        except ValueError as exc:
            raise BadRequest(f"{key} cannot be split into arguments: {exc}") from None
    elif isinstance(value, list):
        args = value
    else:
        raise BadRequest(f"{key} must be a string or a list of strings")
    if len(args) > MAX_ARGS:
        raise BadRequest(f"{key} has more than {MAX_ARGS} arguments")
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            raise BadRequest(f"{key}[{index}] must be a string, not {type(arg).__name__}")
        if _CONTROL.search(arg):
            raise BadRequest(f"{key}[{index}] must not contain control characters")
    return tuple(args)


def _partition(key: str, value: Any) -> str:
    name = _text(key, value, max_length=64)
    if not PARTITION_PATTERN.match(name):
        raise BadRequest(f"{key} may hold only letters, digits and _ . + -, not {name!r}")
    return name


_JOBCONF_KEYS = (
    "job_wdir",
    "job_name",
    "time_limit",
    "partition",
    "scale_cores",
    "scale_memGB",
    "scale_Nodes",
    "jobfile_args",
)


def parse_jobconf(raw: Any) -> JobOptions:
    """Validate a ``jobconf`` (a JSON object, a JSON string of one, or nothing)."""
    if raw is None or raw == "":
        return JobOptions()
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"jobconf is not valid JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise BadRequest('jobconf must be a JSON object such as {"job_name": "hello"}')
    unknown = [key for key in raw if key not in _JOBCONF_KEYS]
    if unknown:
        raise BadRequest(
            f"unknown jobconf key {unknown[0]!r}; the keys are {', '.join(_JOBCONF_KEYS)}"
        )
    conf = {key: value for key, value in raw.items() if value is not None}
    return JobOptions(
        working_dir=_text("job_wdir", conf["job_wdir"]) if "job_wdir" in conf else None,
        name=_text("job_name", conf["job_name"], max_length=MAX_NAME)
        if "job_name" in conf
        else None,
        time_limit_minutes=_whole_number("time_limit", conf["time_limit"], maximum=MAX_TIME_MINUTES)
        if "time_limit" in conf
        else None,
        partition=_partition("partition", conf["partition"]) if "partition" in conf else None,
        cores=_whole_number("scale_cores", conf["scale_cores"], maximum=MAX_CORES)
        if "scale_cores" in conf
        else None,
        memory_mb=_memory_mb("scale_memGB", conf["scale_memGB"]) if "scale_memGB" in conf else None,
        nodes=_whole_number("scale_Nodes", conf["scale_Nodes"], maximum=MAX_NODES)
        if "scale_Nodes" in conf
        else None,
        script_args=_arguments("jobfile_args", conf["jobfile_args"])
        if "jobfile_args" in conf
        else (),
    )


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
    if jobfile is not None:
        return Submission(options=options, jobfile=_text("jobfile", jobfile))
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
        script_path=_text("jobfilepath", script_path) if script_path is not None else None,
    )


def parse_jobid(raw: Any) -> str:
    """A job id as the scheduler knows it: digits, or an array task ``123_4``."""
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise BadRequest("give the job id as jobid, e.g. jobid=4816214")
    jobid = str(raw).strip()
    if not JOBID_PATTERN.match(jobid):
        raise BadRequest(f"{jobid[:40]!r} is not a job id; a job id looks like 4816214")
    return jobid
