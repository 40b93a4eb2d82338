"""Shapes for the OpenAPI document: request bodies and the spec's own examples."""

from __future__ import annotations

from typing import Any

from fastapi import Path
from pydantic import BaseModel, Field


class Envelope(BaseModel):
    """Every answer: ``status`` (OK or ERROR), ``output``, ``status_code``, ``error``."""

    status: str = Field(examples=["OK"])
    output: Any = None
    status_code: int = Field(examples=[200])
    error: str = Field("", examples=[""])


class LoginBody(BaseModel):
    username: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$",
        examples=["alice"],
    )
    password: str = Field(min_length=1, max_length=4096, examples=["wonderland"])


class CommandBody(BaseModel):
    command: str = Field(
        description="a command line, run by the user's own shell", examples=["ls /root"]
    )


class JobConf(BaseModel):
    """Optional job parameters; only the keys you set are passed to the scheduler."""

    job_wdir: str | None = Field(None, description="working directory")
    job_name: str | None = Field(None, description="job name")
    time_limit: int | None = Field(None, description="run-time limit, minutes")
    partition: str | None = Field(None, description="partition")
    scale_cores: int | None = Field(None, description="number of cores (tasks)")
    scale_memGB: float | None = Field(None, description="memory per node, GB")
    scale_Nodes: int | None = Field(None, description="number of nodes")
    jobfile_args: str | list[str] | None = Field(None, description="arguments after the script")


class SubmitBody(BaseModel):
    """Either jobscript (+ optional jobfilepath) or jobfile. Form fields or JSON."""

    jobscript: str | None = Field(None, examples=["#!/bin/bash\necho hello\n"])
    jobfilepath: str | None = Field(
        None, description="where to write jobscript; default ~/newt/<generated>.sh"
    )
    jobfile: str | None = Field(None, description="a script already on the machine")
    jobconf: JobConf | str | None = Field(
        None, description="a JSON object, or (form-encoded) a JSON string of one"
    )


class KillBody(BaseModel):
    jobid: str = Field(pattern=r"^[0-9]{1,12}(_[0-9]{1,9})?$", examples=["4816214"])


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """Replace local ``$ref``s by the definitions they name (our models are not recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    return node


def body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a body accepted as JSON or as a form."""
    schema = model.model_json_schema()
    schema = _inline(schema, schema.pop("$defs", {}))
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": _form(schema)},
            },
        }
    }


def _form(schema: dict[str, Any]) -> dict[str, Any]:
    """A form has no null: optional fields are simply left out. An object-valued field
    (``jobconf``) travels as a JSON string."""
    properties = {}
    for name, field in schema.get("properties", {}).items():
        options = [
            o for o in field.get("anyOf", [field]) if o.get("type") not in ("null", "object")
        ]
        plain = options[0] if len(options) == 1 else {"anyOf": options}
        properties[name] = {k: v for k, v in field.items() if k not in ("anyOf", "default")} | plain
    return schema | {"properties": properties}


def example(output: Any, description: str = "Success") -> dict[int | str, dict[str, Any]]:
    """``responses`` for a route: its success example, and the error envelope."""
    schema = Envelope.model_json_schema()
    return {
        200: {
            "description": description,
            "content": {
                "application/json": {
                    "schema": schema,
                    "example": {"status": "OK", "output": output, "status_code": 200, "error": ""},
                }
            },
        },
        "4XX": {
            "description": "Bad input (400), not logged in (401), not yours (403), unknown "
            "machine or job (404), conflict (409)",
            "content": {"application/json": {"schema": schema, "example": ERROR_EXAMPLE}},
        },
        "5XX": {
            "description": "Scheduler or machine unreachable (503), timed out (504)",
            "content": {"application/json": {"schema": schema}},
        },
    }


ERROR_EXAMPLE = {
    "status": "ERROR",
    "output": "",
    "status_code": 401,
    "error": "not logged in: POST /api/auth with username and password first",
}
COMMAND_EXAMPLE = {
    "output": "",
    "retcode": 1,
    "error": "touch: cannot touch '/root/a': Permission denied\n",
}
SUBMIT_EXAMPLE = {"jobid": "4816214"}
QUEUE_EXAMPLE = {
    "status": {"4816213": "Pending", "4816214": "Pending"},
    "nodelist": {"4816213": "(Priority)", "4816214": "(Priority)"},
    "name": {"4816213": "job.sh", "4816214": "hello"},
    "partition": {"4816213": "work", "4816214": "work"},
    "user": {"4816213": "alice", "4816214": "alice"},
    "time": {"4816213": "0:00", "4816214": "0:00"},
    "nodes": {"4816213": 2, "4816214": 2},
    "id": {"4816213": "4816213", "4816214": "4816214"},
}
JOB_EXAMPLE = {
    "status": {"4816216": "Completed", "4816216.batch": "Completed"},
    "tasks": {"4816216": "", "4816216.batch": 1},
    "name": {"4816216": "newt_k8lm3_pc", "4816216.batch": "batch"},
    "partition": {"4816216": "work", "4816216.batch": ""},
    "time": {"4816216": "00:00:03", "4816216.batch": "00:00:03"},
    "nodes": {"4816216": 2, "4816216.batch": 1},
    "id": {"4816216": "4816216", "4816216.batch": "4816216.batch"},
    "exitcode": {"4816216": "0:0", "4816216.batch": "0:0"},
    "user": {"4816216": "alice", "4816216.batch": ""},
    "nodelist": {"4816216": "node[1-2]", "4816216.batch": "node1"},
}
STATUS_EXAMPLE = {
    "ln3": {
        "queue": {"PD": 1, "R": 1111, "time": 0.012, "health": 0.8},
        "info": {"work": {"idle": 22, "alloc": 333}},
        "updated": "2026-11-27T00:00:00.000000Z",
        "stale": False,
    }
}
LOGIN_EXAMPLE = {
    "auth": True,
    "username": "alice",
    "session_lifetime": 43200,
    "expires": "2026-11-27T12:00:00Z",
    "token": "<random token: send as Authorization: Bearer ...>",
}

MACHINE: Any = Path(description="a configured machine", examples=["ln3"])
JOBID: Any = Path(description="a job id", examples=["4816214"])
