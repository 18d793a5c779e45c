"""Invariant 7: bad input gets a clear 4xx problem+json with a stable code, and
changes nothing (rows of every table counted before and after)."""

from __future__ import annotations

import io
from typing import Any
from uuid import uuid4

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import register, row_counts, start

Client = TestClient[Any, Any]

INVALID_ASL = {
    "StartAt": "Missing",
    "States": {
        "A": {"Type": "Pass"},  # neither Next nor End
        "B": {"Type": "Bogus", "End": True},
    },
}
BIG = "x" * (256 * 1024)
# Under the size limit but nested deeper than a JSON parser can go.
DEEP = b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"

# (method, path, raw body or JSON, expected status, expected code)
CASES: list[tuple[str, str, bytes | Any, int, str]] = [
    ("PUT", "/v1/workflows/wf2", b'{"definition": {', 400, "malformed_json"),
    ("PUT", "/v1/workflows/wf2", b"\xff\xfe not json", 400, "malformed_json"),
    ("PUT", "/v1/workflows/wf2", {"definition": [1, 2]}, 422, "invalid_body"),
    ("PUT", "/v1/workflows/wf2", {}, 422, "invalid_body"),
    ("PUT", "/v1/workflows/wf2", {"definition": {}, "extra": 1}, 422, "invalid_body"),
    ("PUT", "/v1/workflows/wf2", {"definition": INVALID_ASL}, 422, "invalid_definition"),
    ("PUT", "/v1/workflows/bad%20name", {"definition": {}}, 400, "invalid_request"),
    # Definitions may be up to 1 MiB (Step Functions' quota), inputs up to 256 KiB.
    ("PUT", "/v1/workflows/wf2", {"definition": {"Comment": BIG * 5}}, 413, "payload_too_large"),
    ("POST", "/v1/workflows/wf/executions", b"[1,", 400, "malformed_json"),
    ("POST", "/v1/workflows/wf/executions", DEEP, 400, "malformed_json"),
    ("PUT", "/v1/workflows/wf2", DEEP, 400, "malformed_json"),
    ("POST", "/v1/workflows/wf/executions", {"name": 5}, 422, "invalid_body"),
    ("POST", "/v1/workflows/wf/executions", {"name": "a b"}, 422, "invalid_body"),
    ("POST", "/v1/workflows/wf/executions", {"name": "x" * 81}, 422, "invalid_body"),
    ("POST", "/v1/workflows/wf/executions", {"input": BIG}, 413, "payload_too_large"),
    ("POST", "/v1/workflows/wf/executions", {"input": {"k": BIG * 2}}, 413, "payload_too_large"),
    ("POST", "/v1/workflows/nope/executions", {"input": {}}, 404, "workflow_not_found"),
    ("GET", "/v1/executions/not-a-uuid", None, 404, "execution_not_found"),
    ("GET", f"/v1/executions/{uuid4()}", None, 404, "execution_not_found"),
    ("GET", f"/v1/executions/{uuid4()}/history", None, 404, "execution_not_found"),
    ("GET", f"/v1/executions/{uuid4()}/state", None, 404, "execution_not_found"),
    ("POST", f"/v1/executions/{uuid4()}/stop", {}, 404, "execution_not_found"),
    ("POST", "/v1/executions/'; DROP TABLE events;--/stop", {}, 404, "execution_not_found"),
    ("GET", "/v1/executions?limit=0", None, 400, "invalid_request"),
    ("GET", "/v1/executions?limit=abc", None, 400, "invalid_request"),
    ("GET", "/v1/executions?status=BORED", None, 400, "invalid_request"),
    ("GET", "/v1/executions?cursor=!!notbase64", None, 400, "invalid_request"),
    ("GET", "/v1/executions?color=red", None, 400, "invalid_request"),
    ("GET", "/v1/executions/{seed}/state?seq=0", None, 400, "invalid_request"),
    ("GET", "/v1/executions/{seed}/history?cursor=Zm9v", None, 400, "invalid_request"),
    ("DELETE", "/v1/workflows/wf", None, 405, "method_not_allowed"),
    ("GET", "/v1/nothing-here", None, 404, "route_not_found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), CASES)
async def test_bad_input_is_refused_and_changes_nothing(
    client: Client,
    pool: asyncpg.Pool,
    method: str,
    path: str,
    body: bytes | Any,
    status: int,
    code: str,
) -> None:
    await register(client, "wf")
    seed = await start(client, "wf", input={"seed": 1}, name="seed")
    path = path.replace("{seed}", seed["execution_id"])
    before = await row_counts(pool)

    kwargs: dict[str, Any] = {}
    if body is not None and not isinstance(body, bytes):
        body = msgspec.json.encode(body)
    if body is not None:
        # A stream: aiohttp warns about raw bodies over 1 MiB (the definition case).
        kwargs = {"data": io.BytesIO(body), "headers": {"Content-Type": "application/json"}}
    resp = await client.request(method, path, **kwargs)

    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert problem["request_id"] == resp.headers["X-Request-ID"]
    assert await row_counts(pool) == before


async def test_invalid_asl_lists_every_error_with_its_path(client: Client) -> None:
    resp = await client.put("/v1/workflows/wf", json={"definition": INVALID_ASL})

    assert resp.status == 422
    problem = await resp.json()
    paths = [e["path"] for e in problem["errors"]]
    assert len(problem["errors"]) >= 3, problem
    assert all(set(e) == {"path", "message"} and e["message"] for e in problem["errors"])
    assert any("StartAt" in p for p in paths), paths
    assert any("States.A" in p for p in paths), paths
    assert any("States.B" in p for p in paths), paths


async def test_wrong_shape_names_the_msgspec_path(client: Client) -> None:
    resp = await client.put("/v1/workflows/wf", json={"definition": "nope"})

    problem = await resp.json()
    assert problem["errors"] == [
        {"path": "$.definition", "message": "Expected `object`, got `str`"}
    ]


async def test_method_not_allowed_says_what_is(client: Client) -> None:
    resp = await client.delete("/v1/workflows/wf")

    assert resp.status == 405
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD", "PUT"}


async def test_a_body_over_the_limit_is_refused_before_decoding(
    client: Client, pool: asyncpg.Pool
) -> None:
    await register(client, "wf")
    before = await row_counts(pool)

    resp = await client.post(
        "/v1/workflows/wf/executions",
        data=b'{"input": "' + b"y" * 300_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )

    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"
    assert await row_counts(pool) == before


async def test_same_name_different_input_is_409(client: Client, pool: asyncpg.Pool) -> None:
    await register(client, "wf")
    await start(client, "wf", input={"a": 1}, name="once")
    before = await row_counts(pool)

    resp = await client.post(
        "/v1/workflows/wf/executions", json={"input": {"a": 2}, "name": "once"}
    )

    assert resp.status == 409
    assert (await resp.json())["code"] == "execution_name_conflict"
    assert await row_counts(pool) == before
