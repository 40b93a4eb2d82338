"""Shapes for the OpenAPI document: request bodies, built from :mod:`hpcgate.contract`,
and the spec's own examples."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, Field, create_model

from hpcgate import contract


class Envelope(BaseModel):
    """Every answer: ``status`` (OK or ERROR), ``output``, ``status_code``, ``error``."""

    status: str = Field(examples=["OK"])
    output: Any = None
    status_code: int = Field(examples=[200])
    error: str = Field("", examples=[""])


def _value_type(value: contract.Value) -> Any:
    """The type of a contract value, with its bounds, as pydantic writes JSON Schema."""
    match value:
        case contract.Text():
            return Annotated[
                str,
                Field(
                    min_length=value.min_length or None,
                    max_length=value.max_length,
                    pattern=value.pattern,
                ),
            ]
        case contract.WholeNumber():
            return Annotated[int, Field(ge=value.minimum, le=value.maximum)]
        case contract.Gigabytes():
            return Annotated[float, Field(gt=0, le=value.maximum)]
        case contract.Arguments():
            return str | Annotated[list[str], Field(max_length=value.max_items)]


JobConf = create_model(  # type: ignore[call-overload]
    "JobConf",
    __doc__=contract.JOBCONF_MEANING,
    **{
        key: (_value_type(spec.value) | None, Field(None, description=spec.meaning))
        for key, spec in contract.JOBCONF.items()
    },
)


def _form_model(form: contract.Form) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, spec in form.fields.items():
        if isinstance(spec.value, contract.JobconfObject):
            kind: Any = JobConf | str
        else:
            kind = _value_type(spec.value)
        examples = [spec.example] if spec.example is not None else None
        if spec.required:
            fields[name] = (kind, Field(description=spec.meaning, examples=examples))
        else:
            fields[name] = (kind | None, Field(None, description=spec.meaning, examples=examples))
    model: type[BaseModel] = create_model(form.name, __doc__=form.meaning, **fields)
    return model


LoginBody = _form_model(contract.LOGIN)
CommandBody = _form_model(contract.COMMAND)
SubmitBody = _form_model(contract.SUBMIT)
KillBody = _form_model(contract.KILL)


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
JOBID: Any = Path(
    description="a job id",
    examples=["4816214"],
    # Documented only: a malformed id gets the gateway's own 400, not FastAPI's 422.
    json_schema_extra={"pattern": contract.JOBID_PATTERN},
)


class SubscriptionBody(BaseModel):
    """POST /api/subscriptions, as JSON or a form."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="where to POST each event: http(s); private, loopback and link-local "
        "addresses are refused unless the gateway's webhooks.allow lets them",
        examples=["https://ci.example.org/hooks/hpcgate"],
    )
    types: str | None = Field(
        None,
        max_length=1000,
        description="event types, comma-separated (default: all), e.g. "
        "org.hpcgate.job.completed,org.hpcgate.job.failed",
    )
    machine: str | None = Field(None, max_length=64, description="only this machine's jobs")
    jobid: str | None = Field(None, max_length=40, description="only this job's events")
    expires_in: int | None = Field(None, ge=1, description="seconds the subscription lasts")


SUBSCRIPTION_EXAMPLE: dict[str, Any] = {
    "id": "3f6c0a...",
    "url": "https://ci.example.org/hooks/hpcgate",
    "types": ["org.hpcgate.job.completed"],
    "machine": "ln3",
    "jobid": None,
    "created": "2026-11-27T00:30:01.123456Z",
    "expires": "2026-12-04T00:30:01.123456Z",
    "status": "active",
    "disabled_reason": "",
    "failures": 0,
}
DELIVERY_EXAMPLE: dict[str, Any] = {
    "event_id": "42",
    "type": "org.hpcgate.job.completed",
    "subject": "ln3/4816214",
    "attempt": 1,
    "time": 1795891801.123,
    "status": 200,
    "error": "",
    "seconds": 0.031,
    "outcome": "delivered",
}
EVENT_EXAMPLE: dict[str, Any] = {
    "specversion": "1.0",
    "id": "42",
    "source": "/api/job/ln3",
    "type": "org.hpcgate.job.completed",
    "subject": "ln3/4816214",
    "time": "2026-11-27T00:30:01.123456Z",
    "datacontenttype": "application/json",
    "data": {"machine": "ln3", "jobid": "4816214", "state": "COMPLETED"},
}


def streamed(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """``responses`` whose success may also come as Server-Sent Events."""
    success = responses[200]
    event = {
        "type": "object",
        "description": "one Server-Sent Event: its id (for Last-Event-ID) and data",
        "properties": {
            "id": {"type": "string"},
            "event": {"type": "string"},
            "data": {"type": "string", "description": "a CloudEvents 1.0 JSON object"},
        },
    }
    content = {**success["content"], "text/event-stream": {"schema": event}}
    return {**responses, 200: {**success, "content": content}}
