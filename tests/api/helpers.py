"""Helpers of the API tests (fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from api.config import ApiConfig
from steplog.settings import Settings

PASS_DEFINITION: dict[str, Any] = {
    "StartAt": "A",
    "States": {"A": {"Type": "Pass", "End": True}},
}


def api_config(settings: Settings) -> ApiConfig:
    """What steplog/ gives the API of ``settings``."""
    return ApiConfig(
        namespace=settings.namespace,
        max_payload_bytes=settings.max_payload_bytes,
        auth=settings.auth,
        metrics_token=settings.metrics_token,
        request_timeout_s=settings.request_timeout_s,
    )


COUNTED_TABLES = (
    "workflows",
    "workflow_versions",
    "executions",
    "events",
    "executions_view",
    "state_visits",
    "state_stats_progress",
    "namespaces",
    "api_keys",
    "audit_log",
)


async def row_counts(pool: asyncpg.Pool) -> dict[str, int]:
    """Rows of every table a request could change (for "bad input changes nothing")."""
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in COUNTED_TABLES}


async def register(client: TestClient[Any, Any], name: str = "wf", definition: Any = None) -> Any:
    resp = await client.put(
        f"/v1/workflows/{name}", json={"definition": definition or PASS_DEFINITION}
    )
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def start(client: TestClient[Any, Any], workflow: str = "wf", **body: Any) -> Any:
    resp = await client.post(f"/v1/workflows/{workflow}/executions", json=body)
    assert resp.status == 201, await resp.text()
    return await resp.json()
