"""/health/ready with the role loops of the process (steplog.app.RoleHealth): a role that
restarts, restarts in a loop, stops, or makes no progress while work waits makes the
process not ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from api.health import ROLE_HEALTH
from engine.access import Access
from engine.adapters.store import EventStore
from engine.service import EngineService
from projections.queries import Queries
from steplog.app import RoleHealth, _supervised
from steplog.settings import Settings
from tests.api.helpers import api_config
from tests.serving import running_steplog

Client = TestClient[Any, Any]


@pytest.fixture
def health() -> RoleHealth:
    return RoleHealth(stall_after_s=0.2)


@pytest.fixture
async def client(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, settings: Settings, health: RoleHealth
) -> AsyncIterator[Client]:
    service = EngineService(store, max_payload_bytes=settings.max_payload_bytes)
    app = create_app(
        service, Queries(store, pool, redis.ping), api_config(settings), Access.over(pool)
    )
    app[ROLE_HEALTH] = health
    async with TestClient(TestServer(app)) as c:
        yield c


async def ready(client: Client) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/health/ready")
    return resp.status, await resp.json()


async def test_ready_while_every_role_runs(client: Client, health: RoleHealth) -> None:
    stop = asyncio.Event()
    started = asyncio.Event()

    async def loop(stop: asyncio.Event) -> None:
        started.set()
        await stop.wait()

    task = asyncio.create_task(_supervised("engine", loop, stop, health))
    await started.wait()
    status, body = await ready(client)
    stop.set()
    await task

    assert status == 200
    assert body["checks"] == {"postgres": "ok", "redis": "ok", "roles": "ok"}
    assert health.roles["engine"].state == "stopped"


async def test_a_role_restarting_after_an_error_is_not_ready(
    client: Client, health: RoleHealth, eventually: Any
) -> None:
    stop = asyncio.Event()

    async def broken(stop: asyncio.Event) -> None:
        raise RuntimeError("the loop broke")

    task = asyncio.create_task(_supervised("relay", broken, stop, health))
    try:
        await eventually(
            lambda: _true("relay" in health.roles and health.roles["relay"].restarts >= 1)
        )
        status, body = await ready(client)
    finally:
        stop.set()
        await task

    assert status == 503
    assert body["code"] == "service_unavailable"
    assert body["checks"]["roles"] == "relay: restarting after: RuntimeError: the loop broke"
    assert body["checks"]["postgres"] == "ok"


async def _true(value: bool) -> bool:
    return value


async def test_a_role_restarting_in_a_loop_stays_not_ready(
    client: Client, health: RoleHealth
) -> None:
    health.add("worker")
    for _ in range(RoleHealth.FLAP_COUNT):
        health.failed("worker", ValueError("boom"))
        health.running("worker")  # restarted: running again, until the next failure

    status, body = await ready(client)

    assert status == 503
    assert body["checks"]["roles"] == (
        "worker: restarting in a loop: 3 failures in 300s; last: ValueError: boom"
    )


async def test_a_stalled_consumer_with_work_waiting_is_not_ready(
    client: Client, health: RoleHealth, eventually: Any
) -> None:
    done = [0]
    waiting = [0]
    health.add("engine", progress=lambda: done[0], backlog=lambda: waiting[0])
    health.running("engine")
    assert (await ready(client))[0] == 200

    waiting[0] = 7  # work arrives and nothing is handled
    status, body = await eventually(lambda: _not_ready(client), timeout_s=5, interval_s=0.05)
    assert status == 503
    assert body["checks"]["roles"].startswith("engine: no progress for ")
    assert body["checks"]["roles"].endswith("s with 7 entries waiting")

    done[0] = 1  # progress: ready again
    assert (await ready(client))[0] == 200
    waiting[0] = 0
    assert (await ready(client))[0] == 200


async def _not_ready(client: Client) -> tuple[int, dict[str, Any]] | None:
    status, body = await ready(client)
    return (status, body) if status == 503 else None


async def test_a_running_steplog_reports_its_roles(settings: Settings) -> None:
    async with running_steplog(settings) as s:
        status, body = await s.call("GET", "/health/ready")

    assert status == 200
    assert body["checks"] == {"postgres": "ok", "redis": "ok", "roles": "ok"}
