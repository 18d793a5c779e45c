"""Issue 10, item 3 over HTTP: the rate-limit middleware (api/ratelimit.py) and the
RUNNING quota, on the real app, PostgreSQL and Redis; Redis stopped for real (a
redis-server of this test's own) for the fail-open / fail-closed policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import prometheus_client
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from engine.access import Access
from engine.adapters.bus import TokenBuckets
from engine.adapters.limits_store import LimitsStore
from engine.adapters.store import EventStore
from engine.limits import LimitDefaults, Limits, parse_rates
from engine.service import EngineService
from projections.queries import Queries
from steplog.embedded import _start_redis, _stop_redis
from steplog.settings import Settings
from tests.api.helpers import PASS_DEFINITION, api_config, row_counts

WAIT = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "End": True}}}
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def defaults(running_max: int = 0) -> LimitDefaults:
    return LimitDefaults(
        namespace=parse_rates("starts=0.01/2,writes=0.01/3,reads=0.01/4"),
        key=parse_rates("starts=0.01/2,writes=0.01/3,reads=0.01/4"),
        running_max=running_max,
    )


async def limited_client(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, prefix: str, settings: Settings, d: Any
) -> TestClient[Any, Any]:
    limits = Limits(LimitsStore(pool), TokenBuckets(redis, prefix), d)
    service = EngineService(store, max_payload_bytes=settings.max_payload_bytes, limits=limits)
    app = create_app(
        service,
        Queries(store, pool, redis.ping),
        api_config(settings),
        Access.over(pool),
        limits=limits,
    )
    return TestClient(TestServer(app))


@pytest.fixture
async def limited(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, redis_prefix: str, settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    async with await limited_client(pool, store, redis, redis_prefix, settings, defaults()) as c:
        yield c


async def test_allowed_and_refused_responses_carry_the_headers(
    limited: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    for remaining in (3, 2, 1, 0):
        resp = await limited.get("/v1/workflows")
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "4"
        assert resp.headers["RateLimit-Remaining"] == str(remaining)
        assert int(resp.headers["RateLimit-Reset"]) > 0
        assert "Retry-After" not in resp.headers
    resp = await limited.get("/v1/workflows")
    assert resp.status == 429
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["RateLimit-Remaining"] == "0"
    # An error response of an allowed request carries them too.
    resp = await limited.put("/v1/workflows/wf", json={"definition": "not an object"})
    assert resp.status in (400, 422) and resp.headers["RateLimit-Limit"] == "3"


async def test_budgets_are_separate(limited: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    resp = await limited.put("/v1/workflows/wf", json={"definition": PASS_DEFINITION})
    assert resp.status == 201 and resp.headers["RateLimit-Remaining"] == "2"
    for _ in range(2):
        resp = await limited.post("/v1/workflows/wf/executions", json={"input": {}})
        assert resp.status == 201 and resp.headers["RateLimit-Limit"] == "2"
    before = await row_counts(pool)
    resp = await limited.post("/v1/workflows/wf/executions", json={"input": {}})
    assert resp.status == 429 and (await resp.json())["code"] == "rate_limited"
    assert await row_counts(pool) == before  # a refused start changes nothing
    # Starts are spent; reads and other writes are not.
    assert (await limited.get("/v1/workflows/wf")).status == 200
    resp = await limited.put("/v1/workflows/wf", json={"definition": PASS_DEFINITION})
    assert resp.status == 200 and resp.headers["RateLimit-Remaining"] == "1"


async def test_health_metrics_and_docs_are_not_limited(limited: TestClient[Any, Any]) -> None:
    for _ in range(6):
        for path in ("/health/live", "/health/ready", "/metrics", "/docs", "/v1/openapi.json"):
            resp = await limited.get(path)
            assert resp.status == 200, path
            assert not any(h in resp.headers for h in HEADERS), path


async def test_the_running_quota_refuses_the_next_start_with_its_code(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, redis_prefix: str, settings: Settings
) -> None:
    roomy = LimitDefaults(
        namespace=parse_rates("starts=100/100,writes=100/100,reads=100/100"),
        key=parse_rates("starts=100/100,writes=100/100,reads=100/100"),
        running_max=3,
    )
    async with await limited_client(pool, store, redis, redis_prefix, settings, roomy) as c:
        assert (await c.put("/v1/workflows/wait", json={"definition": WAIT})).status == 201
        for i in range(3):
            resp = await c.post("/v1/workflows/wait/executions", json={"input": {"i": i}})
            assert resp.status == 201
        before = await row_counts(pool)
        resp = await c.post("/v1/workflows/wait/executions", json={"input": {"i": 3}})
        assert resp.status == 429
        body = await resp.json()
        assert body["code"] == "running_quota_exceeded" and "quota is 3" in body["detail"]
        assert await row_counts(pool) == before


def _fail_count(decision: str, budget: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(
        "steplog_rate_limit_fail_total", {"decision": decision, "budget": budget}
    )
    return value or 0.0


async def test_redis_away_reads_pass_and_writes_get_503(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    proc, url = await _start_redis(redis_dir)
    own = Redis.from_url(url)
    try:
        async with await limited_client(pool, store, own, "rl", settings, defaults()) as c:
            resp = await c.put("/v1/workflows/wf", json={"definition": PASS_DEFINITION})
            assert resp.status == 201 and "RateLimit-Limit" in resp.headers
            await _stop_redis(proc)
            opened, closed = _fail_count("open", "reads"), _fail_count("closed", "starts")
            for _ in range(6):  # past the read budget of 4: unlimited while Redis is away
                resp = await c.get("/v1/workflows/wf")
                assert resp.status == 200 and "RateLimit-Limit" not in resp.headers
            before = await row_counts(pool)
            resp = await c.post("/v1/workflows/wf/executions", json={"input": {}})
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert (await resp.json())["code"] == "service_unavailable"
            resp = await c.put("/v1/workflows/wf", json={"definition": PASS_DEFINITION})
            assert resp.status == 503
            assert await row_counts(pool) == before
            assert _fail_count("open", "reads") == opened + 6
            assert _fail_count("closed", "starts") == closed + 1
            assert _fail_count("closed", "writes") >= 1
    finally:
        await own.aclose()
        await _stop_redis(proc)


def test_the_openapi_document_declares_429_and_the_headers_on_every_limited_operation() -> None:
    from api.openapi import document

    paths = document()["paths"]
    limited = 0
    for path, operations in paths.items():
        for method, op in operations.items():
            responses = op["responses"]
            if path.startswith("/v1/") and path != "/v1/openapi.json":
                limited += 1
                assert "429" in responses, (method, path)
                if method != "get":
                    assert "503" in responses, (method, path)
                for status, response in responses.items():
                    assert set(HEADERS) <= set(response["headers"]), (method, path, status)
                assert "Retry-After" in responses["429"]["headers"]
            else:
                assert "429" not in responses, (method, path)
    assert limited >= 10
