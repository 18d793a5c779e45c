"""Request ids, health, metrics, and the 500/503 paths of the error middleware."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from engine.access import Access
from engine.adapters.store import EventStore
from engine.core.state import ExecutionState
from engine.service import EngineService
from projections.queries import Queries
from steplog.logs import ContextFilter, JsonFormatter, configure_logging, request_id_var
from steplog.settings import Settings
from tests.api.helpers import api_config, register, start

Client = TestClient[Any, Any]


async def test_request_id_is_echoed(client: Client) -> None:
    resp = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})

    assert resp.headers["X-Request-ID"] == "abc-123"


async def test_request_id_is_made_when_missing_or_unsafe(client: Client) -> None:
    plain = await client.get("/health/live")
    unsafe = await client.get("/v1/nothing", headers={"X-Request-ID": "a b\tc" + "x" * 200})

    assert re.fullmatch(r"[0-9a-f]{32}", plain.headers["X-Request-ID"])
    made = unsafe.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert (await unsafe.json())["request_id"] == made


async def test_logs_carry_the_request_and_execution_ids(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    await register(client, "wf")
    eid = (await start(client, "wf"))["execution_id"]
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("json", "INFO")
    try:
        await client.get(f"/v1/executions/{eid}", headers={"X-Request-ID": "req-77"})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    access = [d for d in lines if d["logger"] == "steplog.api.access"]
    assert access, lines
    assert access[-1]["request_id"] == "req-77"
    assert access[-1]["execution_id"] == eid
    assert access[-1]["route"] == "/v1/executions/{id}"
    assert request_id_var.get() is None


async def test_health(client: Client) -> None:
    live = await client.get("/health/live")
    ready = await client.get("/health/ready")

    assert (live.status, await live.json()) == (200, {"status": "ok"})
    assert ready.status == 200
    assert await ready.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_metrics_count_requests_by_route_and_status(client: Client) -> None:
    await client.get("/health/live")
    await client.get("/v1/executions/00000000-0000-0000-0000-000000000000")

    text = await (await client.get("/metrics")).text()

    assert 'steplog_http_requests_total{method="GET",route="/health/live",status="200"} 1.0' in text
    assert (
        'steplog_http_requests_total{method="GET",route="/v1/executions/{id}",status="404"} 1.0'
        in text
    )
    assert "steplog_http_request_duration_seconds_bucket" in text


@pytest.fixture
async def down_redis() -> AsyncIterator[Redis]:
    # Port 1 on localhost: nothing listens there, connecting is refused at once.
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    yield client
    await client.aclose()


async def test_ready_is_503_when_redis_is_down(
    pool: asyncpg.Pool, store: EventStore, down_redis: Redis, settings: Settings
) -> None:
    app = create_app(
        EngineService(store),
        Queries(store, pool, down_redis.ping),
        api_config(settings),
        Access.over(pool),
    )
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/health/ready")
        body = await resp.json()

    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert body["code"] == "service_unavailable"
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("error")


async def test_a_lost_database_is_503_with_retry_after(
    database_url: str, redis: Redis, settings: Settings
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    store = EventStore(pool)
    app = create_app(
        EngineService(store),
        Queries(store, pool, redis.ping),
        api_config(settings),
        Access.over(pool),
    )
    async with TestClient(TestServer(app)) as c:
        await pool.close()
        resp = await c.get("/v1/executions")
        body = await resp.json()
        ready = await c.get("/health/ready")

    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert body["code"] == "service_unavailable"
    assert ready.status == 503


class BrokenQueries(Queries):
    """A query side with a bug: the middleware must answer 500 and log it."""

    async def state_at(
        self, namespace: str | None, execution_id: UUID, seq: int | None = None
    ) -> ExecutionState:
        raise RuntimeError("bug")


async def test_an_unexpected_error_is_500_with_the_request_id(
    pool: asyncpg.Pool,
    store: EventStore,
    redis: Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.addFilter(ContextFilter())  # what configure_logging's handler does
    app = create_app(
        EngineService(store),
        BrokenQueries(store, pool, redis.ping),
        api_config(settings),
        Access.over(pool),
    )
    async with TestClient(TestServer(app)) as c:
        resp = await c.get(
            "/v1/executions/00000000-0000-0000-0000-000000000001/state",
            headers={"X-Request-ID": "req-500"},
        )
        body = await resp.json()

    assert resp.status == 500
    assert resp.content_type == "application/problem+json"
    assert (body["code"], body["request_id"]) == ("internal", "req-500")
    assert "bug" not in body["detail"]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert logged
    line = json.loads(JsonFormatter().format(logged[0]))
    assert line["request_id"] == "req-500"
    assert line["execution_id"] == "00000000-0000-0000-0000-000000000001"
    assert "RuntimeError: bug" in line["exc"]
