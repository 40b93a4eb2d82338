"""The submit form: its fields (from the request contract), templates, and how a
validation message finds the field it concerns."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hpcgate import contract


@dataclass(frozen=True)
class Field:
    """One input of the submit form: a ``jobconf`` key or a submit field."""

    name: str
    kind: str
    """``text``, ``number``, ``partition`` (a select) or ``script`` (the editor)."""
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: str | None = None


def _jobconf_field(key: str) -> Field:
    match contract.JOBCONF[key].value:
        case contract.Text(max_length=length) if key == "partition":
            return Field(key, "partition", max_length=length)
        case contract.Text(max_length=length):
            return Field(key, "text", max_length=length)
        case contract.WholeNumber(minimum=low, maximum=high):
            return Field(key, "number", minimum=low, maximum=high, step="1")
        case contract.Gigabytes(maximum=high):
            return Field(key, "number", minimum=0, maximum=high, step="any")
        case contract.Arguments():
            return Field(key, "text")
    raise LookupError(key)


JOBCONF_FIELDS = [_jobconf_field(key) for key in contract.JOBCONF]
"""The ``jobconf`` inputs, in the contract's order."""
SCRIPT_PATH = Field(
    "jobfilepath", "text", max_length=contract.text_rule(contract.SUBMIT, "jobfilepath").max_length
)
JOBFILE = Field(
    "jobfile", "text", max_length=contract.text_rule(contract.SUBMIT, "jobfile").max_length
)
FIELD_NAMES = ["jobscript", "jobfilepath", "jobfile", *contract.JOBCONF]

# Longest names first, so that "jobfile_args" and "jobfilepath" are not read as "jobfile".
_NAMED = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, FIELD_NAMES), key=len, reverse=True)) + r")\b"
)


def field_of(message: str) -> str | None:
    """The form field a validation message is about: the first field it names."""
    found = _NAMED.search(message)
    return found.group(1) if found else None


def submission_fields(form: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``POST /api/job/<machine>`` from the submit form: blank inputs are
    not given, and the ``jobconf`` inputs make up the ``jobconf`` object."""
    fields: dict[str, Any] = {}
    for name in ("jobscript", "jobfilepath", "jobfile"):
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            fields[name] = value.replace("\r\n", "\n")  # a browser's textarea sends CRLF
    jobconf = {}
    for key in contract.JOBCONF:
        value = form.get(key)
        if isinstance(value, str) and value.strip():
            jobconf[key] = value
    if jobconf:
        fields["jobconf"] = jobconf
    return fields


@dataclass(frozen=True)
class Template:
    """A script to start from, with the jobconf values that suit it."""

    name: str
    script: str
    values: dict[str, str]


TEMPLATES = {
    "serial": Template(
        "serial",
        '#!/bin/bash\n# One task on one core.\necho "hello from $(hostname)"\nsleep 30\n',
        {"job_name": "serial", "time_limit": "10", "scale_cores": "1"},
    ),
    "mpi": Template(
        "mpi",
        "#!/bin/bash\n# One task per core across the nodes; srun starts them all.\nsrun hostname\n",
        {"job_name": "mpi", "time_limit": "10", "scale_Nodes": "2", "scale_cores": "4"},
    ),
    "array": Template(
        "array",
        "#!/bin/bash\n# Run as an array with sbatch --array, or loop here over inputs.\n"
        'for input in 1 2 3; do\n\techo "input $input on $(hostname)"\ndone\n',
        {"job_name": "array", "time_limit": "10"},
    ),
}
