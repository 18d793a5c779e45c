"""Issue 9, item 1: the OpenAPI document is generated from the handlers' types,
covers every route of the app (and nothing else), and publishes the bounds the
API enforces."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp.test_utils import TestClient

from api.openapi import OPERATIONS, document
from api.schemas import DB_INT_MAX

Client = TestClient[Any, Any]


def _params(path: str, method: str) -> dict[str, Any]:
    op = document()["paths"][path][method]
    return {p["name"]: p for p in op["parameters"]}


async def test_the_document_is_served_and_is_openapi_3_1(client: Client) -> None:
    resp = await client.get("/v1/openapi.json")

    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert doc == msgspec.json.decode(msgspec.json.encode(document()))
    assert doc["openapi"] == "3.1.0"
    assert {"Problem", "ExecutionOut", "StartExecution", "WorkflowOut"} <= set(
        doc["components"]["schemas"]
    )


async def test_every_route_of_the_app_is_documented_and_nothing_else(client: Client) -> None:
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in client.server.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert served == documented


def test_numeric_parameters_carry_the_database_bounds() -> None:
    for path, method, name, low in (
        ("/v1/executions", "get", "version", 1),
        ("/v1/workflows/{name}", "get", "version", 1),
        ("/v1/workflows/{name}/stats", "get", "version", 1),
        ("/v1/executions/{id}/state", "get", "seq", 1),
        ("/v1/executions/{id}/state/diff", "get", "from", 1),
        ("/v1/executions/{id}/state/diff", "get", "to", 1),
        ("/v1/executions/{id}/events", "get", "after", 0),
    ):
        schema = _params(path, method)[name]["schema"]
        assert (schema["minimum"], schema["maximum"]) == (low, DB_INT_MAX), (path, name)
    limit = _params("/v1/executions", "get")["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    assert _params("/v1/executions/{id}/state/diff", "get")["to"]["required"] is True


def test_every_error_response_is_a_problem_and_links_drive_stateful_tests() -> None:
    doc = document()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    content = response["content"]["application/problem+json"]
                    assert content["schema"] == {"$ref": "#/components/schemas/Problem"}
                    continue
                if status == "204":  # No Content: no body by definition
                    assert "content" not in response, (path, method)
                    continue
                assert response["content"], (path, method, status)
    start = doc["paths"]["/v1/workflows/{name}/executions"]["post"]["responses"]["201"]
    assert start["links"]["GetExecution"]["parameters"] == {"id": "$response.body#/execution_id"}


async def test_the_reference_page_renders_every_route(client: Client) -> None:
    resp = await client.get("/docs")

    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    for op in OPERATIONS:
        assert f"{op.method.upper()} {op.path}" in page
