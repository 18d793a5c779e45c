"""Workflow registration and reads through HTTP."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.helpers import PASS_DEFINITION, register

Client = TestClient[Any, Any]

TWO_STATES = {
    "StartAt": "A",
    "States": {"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Succeed"}},
}


async def test_register_creates_then_is_unchanged(client: Client, pool: asyncpg.Pool) -> None:
    first = await client.put("/v1/workflows/orders", json={"definition": PASS_DEFINITION})
    again = await client.put("/v1/workflows/orders", json={"definition": PASS_DEFINITION})

    assert first.status == 201
    body = await first.json()
    assert body["name"] == "orders"
    assert body["version"] == 1
    assert body["definition"] == PASS_DEFINITION
    assert body["created_at"].endswith("Z")
    assert first.headers["Location"] == "/v1/workflows/orders?version=1"
    assert again.status == 200
    assert (await again.json())["version"] == 1
    assert await pool.fetchval("SELECT count(*) FROM workflow_versions") == 1


async def test_a_changed_definition_is_a_new_version(client: Client) -> None:
    await register(client, "orders")
    resp = await client.put("/v1/workflows/orders", json={"definition": TWO_STATES})

    assert resp.status == 201
    assert (await resp.json())["version"] == 2
    latest = await (await client.get("/v1/workflows/orders")).json()
    first = await (await client.get("/v1/workflows/orders?version=1")).json()
    assert (latest["version"], latest["definition"]) == (2, TWO_STATES)
    assert (first["version"], first["definition"]) == (1, PASS_DEFINITION)


async def test_list_shows_the_latest_version_of_each(client: Client) -> None:
    await register(client, "a")
    await register(client, "b")
    await register(client, "b", TWO_STATES)

    resp = await client.get("/v1/workflows")

    assert resp.status == 200
    listed = {w["name"]: w["version"] for w in (await resp.json())["workflows"]}
    assert listed == {"a": 1, "b": 2}


async def test_unknown_workflow_or_version_is_404(client: Client) -> None:
    await register(client, "a")
    for path in ("/v1/workflows/nope", "/v1/workflows/a?version=9"):
        resp = await client.get(path)
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "workflow_not_found"


async def test_a_workflow_is_standard_or_express(client: Client) -> None:
    """``type``, as Step Functions' state machine type (its executions' context object
    is checked by the express cases of tests/conformance/test_stack.py): the same
    definition under the other type is a new version; another type is refused."""
    definition = {
        "StartAt": "Ctx",
        "States": {"Ctx": {"Type": "Pass", "Parameters": {"id.$": "$$.Execution.Id"}, "End": True}},
    }
    resp = await client.put(
        "/v1/workflows/fast", json={"definition": definition, "type": "EXPRESS"}
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert (body["type"], body["version"]) == ("EXPRESS", 1)
    resp = await client.put("/v1/workflows/fast", json={"definition": definition})
    assert ((await resp.json())["type"], (await resp.json())["version"]) == ("STANDARD", 2)
    resp = await client.put("/v1/workflows/fast", json={"definition": definition, "type": "BATCH"})
    assert resp.status == 422
