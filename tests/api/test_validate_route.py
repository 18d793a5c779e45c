"""POST /v1/workflows:validate checks a definition without registering it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from steplog.settings import Settings
from tests.serving import Running, running_steplog


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        yield running


async def _validate(app: Running, body: Any) -> tuple[int, Any]:
    async with app.http.post(app.base_url + "/v1/workflows:validate", json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_valid_definition_is_valid_and_nothing_is_stored(app: Running) -> None:
    good = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}
    status, body = await _validate(app, {"definition": good})
    assert (status, body) == (200, {"valid": True, "errors": []})
    assert await app.resources.pool.fetchval("SELECT count(*) FROM workflow_versions") == 0


async def test_an_invalid_definition_lists_every_error_with_its_path(app: Running) -> None:
    bad = {
        "StartAt": "Missing",
        "States": {"A": {"Type": "Pass", "Next": "Nowhere"}, "B": {"Type": "Succeed"}},
    }
    status, body = await _validate(app, {"definition": bad})
    assert status == 200 and body["valid"] is False
    paths = {e["path"] for e in body["errors"]}
    assert "$.StartAt" in paths
    assert "$.States.A.Next" in paths
    assert await app.resources.pool.fetchval("SELECT count(*) FROM workflow_versions") == 0


async def test_a_malformed_body_is_a_400(app: Running) -> None:
    async with app.http.post(
        app.base_url + "/v1/workflows:validate",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json(content_type=None))["code"] == "malformed_json"


async def test_a_body_not_declared_as_json_is_a_415(app: Running) -> None:
    async with app.http.post(app.base_url + "/v1/workflows:validate", data=b"{not json") as resp:
        assert resp.status == 415
        assert (await resp.json(content_type=None))["code"] == "unsupported_media_type"
