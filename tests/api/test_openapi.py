"""The OpenAPI description and the interactive docs."""

from __future__ import annotations

import httpx

from hpcgate import contract


def test_openapi_documents_every_route_with_the_spec_examples(anonymous: httpx.Client) -> None:
    document = anonymous.get("/openapi.json").json()
    paths = document["paths"]
    assert set(paths["/api/auth"]) == {"get", "post", "delete"}
    assert set(paths["/api/job/{name}"]) == {"get", "post", "delete"}
    assert set(paths["/api/job/{name}/{jobid}"]) == {"get", "delete"}
    assert "post" in paths["/api/command/{name}"]
    submit = paths["/api/job/{name}"]["post"]
    assert set(submit["requestBody"]["content"]) == {
        "application/json",
        "application/x-www-form-urlencoded",
    }
    example = submit["responses"]["200"]["content"]["application/json"]["example"]
    assert example == {
        "status": "OK",
        "output": {"jobid": "4816214"},
        "status_code": 200,
        "error": "",
    }
    as_json = submit["requestBody"]["content"]["application/json"]["schema"]
    jobconf = as_json["properties"]["jobconf"]
    (as_object,) = [option for option in jobconf["anyOf"] if option.get("type") == "object"]
    assert list(as_object["properties"]) == list(contract.JOBCONF)
    kill = paths["/api/job/{name}"]["delete"]["requestBody"]["content"]["application/json"]
    assert kill["schema"]["properties"]["jobid"]["pattern"] == contract.JOBID_PATTERN
    listing = paths["/api/job/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listing["example"]["output"]["nodelist"]["4816213"] == "(Priority)"


def test_docs_page(anonymous: httpx.Client) -> None:
    page = anonymous.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
