"""API fixtures: the real app (create_app) on a real TCP server (aiohttp TestServer)
over the per-test PostgreSQL database and Redis prefix of tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from engine.service import EngineService
from engine.store import EventStore
from steplog.settings import Settings

PASS_DEFINITION: dict[str, Any] = {
    "StartAt": "A",
    "States": {"A": {"Type": "Pass", "End": True}},
}
COUNTED_TABLES = ("workflows", "workflow_versions", "executions", "events", "executions_view")


@pytest.fixture
async def client(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    service = EngineService(store, max_payload_bytes=settings.max_payload_bytes)
    app = create_app(service, store, pool, redis, settings)
    async with TestClient(TestServer(app)) as c:
        yield c


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
