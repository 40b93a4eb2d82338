"""The request contract is written once: what the gateway documents, enforces and sends,
and what the client sends, must all be what :mod:`hpcgate.contract` says."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hpcgate import contract
from hpcgate.client import calls
from hpcgate.errors import BadRequest
from hpcgate.jobspec import parse_jobconf, parse_jobid, parse_submission
from tests.conftest import PASSWORDS, Server, error_of, ok_output, wait_for

ROUTES = [
    ("/api/auth", "post", contract.LOGIN),
    ("/api/command/{name}", "post", contract.COMMAND),
    ("/api/job/{name}", "post", contract.SUBMIT),
    ("/api/job/{name}", "delete", contract.KILL),
]
CONSTRAINTS = (
    "type",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "items",
    "maxItems",
)


def expected_branches(value: contract.Value) -> list[dict[str, Any]]:
    """The JSON Schema alternatives a contract value must be documented as."""
    match value:
        case contract.Text():
            text: dict[str, Any] = {"type": "string"}
            if value.min_length:
                text["minLength"] = value.min_length
            if value.max_length is not None:
                text["maxLength"] = value.max_length
            if value.pattern is not None:
                text["pattern"] = value.pattern
            return [text]
        case contract.WholeNumber():
            return [{"type": "integer", "minimum": value.minimum, "maximum": value.maximum}]
        case contract.Gigabytes():
            return [{"type": "number", "exclusiveMinimum": 0, "maximum": value.maximum}]
        case contract.Arguments():
            return [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": value.max_items},
            ]


def documented_branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A property's alternatives, without null (an optional field) and descriptions."""
    options = schema.get("anyOf", [schema])
    return [
        {key: option[key] for key in CONSTRAINTS if key in option}
        for option in options
        if option.get("type") != "null"
    ]


@pytest.fixture(scope="module")
def openapi(local_server: Server) -> dict[str, Any]:
    """The document a real gateway serves."""
    with local_server.client() as client:
        document: dict[str, Any] = client.get("/openapi.json").json()
    return document


@pytest.mark.parametrize(("path", "method", "form"), ROUTES, ids=lambda r: getattr(r, "name", r))
@pytest.mark.parametrize("content", ["application/json", "application/x-www-form-urlencoded"])
def test_served_request_bodies_are_the_contract(
    openapi: dict[str, Any], path: str, method: str, form: contract.Form, content: str
) -> None:
    body = openapi["paths"][path][method]["requestBody"]["content"][content]["schema"]
    assert list(body["properties"]) == list(form.fields)
    assert set(body.get("required", [])) == {n for n, f in form.fields.items() if f.required}
    for name, field in form.fields.items():
        documented = body["properties"][name]
        assert documented.get("description") == field.meaning, name
        if field.example is not None:
            assert documented["examples"] == [field.example], name
        if isinstance(field.value, contract.JobconfObject):
            continue  # below
        assert documented_branches(documented) == expected_branches(field.value), name


def test_served_jobconf_is_the_contract(openapi: dict[str, Any]) -> None:
    submit = openapi["paths"]["/api/job/{name}"]["post"]["requestBody"]["content"]
    as_json = submit["application/json"]["schema"]["properties"]["jobconf"]
    (as_object,) = [b for b in as_json["anyOf"] if b.get("type") == "object"]
    assert {"type": "string"} in as_json["anyOf"], "a JSON string of the object is allowed"
    assert as_object["description"] == contract.JOBCONF_MEANING
    assert list(as_object["properties"]) == list(contract.JOBCONF)
    for key, spec in contract.JOBCONF.items():
        documented = as_object["properties"][key]
        assert documented["description"] == spec.meaning, key
        assert documented_branches(documented) == expected_branches(spec.value), key
    as_form = submit["application/x-www-form-urlencoded"]["schema"]["properties"]["jobconf"]
    assert as_form["type"] == "string"


def test_served_job_id_parameters_carry_the_pattern(openapi: dict[str, Any]) -> None:
    operations = openapi["paths"]["/api/job/{name}/{jobid}"]
    assert set(operations) == {"get", "delete"}
    for operation in operations.values():
        (jobid,) = [p for p in operation["parameters"] if p["name"] == "jobid"]
        assert jobid["schema"]["pattern"] == contract.JOBID_PATTERN


def _boundary_cases(value: contract.Value) -> tuple[list[Any], list[Any]]:
    """Values at the contract's bounds that must be accepted, and just past them."""
    match value:
        case contract.Text():
            longest = "a" * (value.max_length or 50)
            too_long = [longest + "a"] if value.max_length is not None else []
            bad = ["a,b"] if value.pattern is not None else []
            return ["a", longest], [""] * bool(value.min_length) + too_long + bad
        case contract.WholeNumber():
            return [value.minimum, value.maximum], [value.minimum - 1, value.maximum + 1]
        case contract.Gigabytes():
            return [0.001, value.maximum], [0, -1, value.maximum + 0.5]
        case contract.Arguments():
            most = ["a"] * value.max_items
            return [most, " ".join(most)], [[*most, "a"], " ".join([*most, "a"])]


@pytest.mark.parametrize("key", list(contract.JOBCONF))
def test_the_server_enforces_the_documented_jobconf_bounds(key: str) -> None:
    accepted, refused = _boundary_cases(contract.JOBCONF[key].value)
    for value in accepted:
        parse_jobconf({key: value})
        parse_jobconf(json.dumps({key: value}))
    for value in refused:
        with pytest.raises(BadRequest, match=re.escape(key)):
            parse_jobconf({key: value})


def test_the_server_enforces_the_documented_submit_and_kill_fields() -> None:
    longest = contract.max_length(contract.SUBMIT, "jobfile")
    script = {"jobscript": "#!/bin/sh\n"}
    parse_submission({"jobfile": "/" * longest}, max_script_bytes=100)
    parse_submission(script | {"jobfilepath": "/" * longest}, max_script_bytes=100)
    with pytest.raises(BadRequest, match=f"longer than {longest}"):
        parse_submission({"jobfile": "/" * (longest + 1)}, max_script_bytes=100)
    with pytest.raises(BadRequest, match=f"longer than {longest}"):
        parse_submission(script | {"jobfilepath": "/" * (longest + 1)}, max_script_bytes=100)
    pattern = contract.strict(contract.JOBID_PATTERN)
    for jobid in ["1", "4816214", "12_3", "1" * 12, "1" * 13, "1.batch", "x", "1\n", "12_"]:
        documented = bool(pattern.match(jobid))
        try:
            enforced = parse_jobid(jobid) == jobid
        except BadRequest:
            enforced = False
        assert documented == enforced, jobid


def test_patterns_have_no_python_only_end() -> None:
    """Python's ``$`` also matches before a final newline; the checks must not."""
    for compiled in (contract.JOBID, contract.USERNAME, contract.MACHINE_NAME):
        assert compiled.match("1") and not compiled.match("1\n")


@pytest.fixture(scope="module")
def anonymous(local_server: Server) -> Iterator[httpx.Client]:
    with local_server.client() as client:
        yield client


def test_the_gateway_refuses_what_the_contract_refuses(
    local_server: Server, anonymous: httpx.Client
) -> None:
    too_long = contract.max_length(contract.LOGIN, "username") + 1
    answer = anonymous.post("/auth", data={"username": "a" * too_long, "password": "x"})
    assert f"longer than {too_long - 1}" in error_of(answer, 400)
    answer = anonymous.post("/auth", data={"username": "alice\n", "password": "wonderland"})
    assert "malformed" in error_of(answer, 400)
    alice = local_server.login("alice")
    try:
        too_long = contract.max_length(contract.COMMAND, "command") + 1
        answer = alice.post("/command/ln3", data={"command": "x" * too_long})
        assert f"longer than {too_long - 1}" in error_of(answer, 400)
        answer = alice.request("DELETE", "/job/ln3", data={"jobid": "1;2"})
        assert "is not a job id" in error_of(answer, 400)
    finally:
        alice.close()


def test_the_gateway_sends_the_contracts_timestamps(local_server: Server) -> None:
    with local_server.client() as client:
        login = ok_output(
            client.post("/auth", data={"username": "alice", "password": PASSWORDS["alice"]})
        )
        datetime.strptime(login["expires"], contract.SESSION_EXPIRY_FORMAT)
        assert contract.parse_timestamp(login["expires"]).utcoffset() is not None
        listing = client.get("/job/ln3")
        ok_output(listing)
        datetime.strptime(listing.headers["X-Data-Taken"], contract.DATA_TAKEN_FORMAT)

        def updated() -> str | None:
            entry: dict[str, Any] = ok_output(client.get("/job"))["ln3"]
            return entry.get("updated")

        stamp = wait_for(updated, what="a snapshot of ln3")
        datetime.strptime(stamp, contract.DATA_TAKEN_FORMAT)


def test_the_wire_timestamps_keep_their_formats() -> None:
    """Two formats are on the wire; changing either would change what clients parse."""
    assert contract.session_expiry(1.75) == "1970-01-01T00:00:01Z"
    assert contract.data_taken(1.75) == "1970-01-01T00:00:01.750000Z"
    for text in ("1970-01-01T00:00:01Z", "1970-01-01T00:00:01.750000Z"):
        assert contract.parse_timestamp(text).timestamp() == float(text[17:-1])


def test_the_clients_jobconf_table_is_the_contract() -> None:
    assert set(contract.JOBCONF) == calls.JOBCONF_KEYS
    by_option = {spec.option: 1 for spec in contract.JOBCONF.values()}
    assert calls.jobconf(by_option) == dict.fromkeys(contract.JOBCONF, 1)
    assert calls.jobconf(dict.fromkeys(contract.JOBCONF, 2)) == dict.fromkeys(contract.JOBCONF, 2)
    with pytest.raises(TypeError, match="unknown job option"):
        calls.jobconf({"bogus": 1})


def test_each_pattern_is_written_once() -> None:
    """Changing the job-id pattern (or another) must be one edit, in the contract."""
    source = Path(contract.__file__).parent
    patterns = (contract.JOBID_PATTERN, contract.USERNAME_PATTERN, contract.MACHINE_NAME_PATTERN)
    for fragment in (pattern.strip("^$") for pattern in patterns):
        places = [p.name for p in source.rglob("*.py") if fragment in p.read_text()]
        assert places == ["contract.py"], (fragment, places)
