"""Redis emptied while executions run: steplog rebuilds its groups and pending work from
PostgreSQL and every execution finishes. Stop cancels what an execution had in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
import redis.asyncio as aioredis

from engine.messages import WORKER_GROUP
from steplog.settings import Settings
from tests.serving import Running, running_steplog

FLOW = {
    "StartAt": "Nap",
    "States": {
        "Nap": {"Type": "Task", "Resource": "test:sleep", "Next": "Hold"},
        "Hold": {"Type": "Wait", "Seconds": 1, "Next": "Echo"},
        "Echo": {"Type": "Task", "Resource": "test:echo", "End": True},
    },
}
SLOW = {
    "StartAt": "Nap",
    "States": {"Nap": {"Type": "Task", "Resource": "test:sleep", "End": True}},
}
WAIT = {"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 600, "End": True}}}
MAP = {
    "StartAt": "Fan",
    "States": {
        "Fan": {
            "Type": "Map",
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": "Nap",
                "States": {"Nap": {"Type": "Task", "Resource": "test:sleep", "End": True}},
            },
            "End": True,
        }
    },
}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        for name, definition in (("flow", FLOW), ("slow", SLOW), ("wait", WAIT), ("map", MAP)):
            await running.register(name, definition)
        yield running


async def _status(app: Running, execution_id: str) -> str:
    async with app.http.get(f"{app.base_url}/v1/executions/{execution_id}") as resp:
        return str((await resp.json())["status"])


async def _empty_redis(redis: aioredis.Redis, prefix: str) -> int:
    """What FLUSHALL does to this test's deployment (the Redis is shared by tests)."""
    keys = [k async for k in redis.scan_iter(match=f"*{{{prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)
    return len(keys)


@pytest.mark.redis_cluster
async def test_executions_finish_after_redis_is_emptied_mid_run(
    app: Running, redis: aioredis.Redis, redis_prefix: str, eventually: Any
) -> None:
    ids = [await app.start_id("flow", {"seconds": 0.5}) for _ in range(10)]
    await asyncio.sleep(0.3)  # begun, tasks running or queued
    assert await _empty_redis(redis, redis_prefix) > 0

    async def all_done() -> bool:
        return all([await _status(app, i) == "SUCCEEDED" for i in ids])

    await eventually(all_done, timeout_s=20, interval_s=0.2)
    assert await redis.exists(app.resources.bus.keys.sentinel())


async def _no_timers(app: Running, execution_id: str) -> bool:
    count = await app.resources.pool.fetchval(
        "SELECT count(*) FROM timers WHERE execution_id = $1", UUID(execution_id)
    )
    return bool(count == 0)


async def _stop(app: Running, execution_id: str) -> None:
    async with app.http.post(f"{app.base_url}/v1/executions/{execution_id}/stop", json={}) as r:
        assert r.status == 200, await r.text()


async def _nothing_pending(app: Running, redis: aioredis.Redis) -> bool:
    pending = await redis.xpending(app.resources.bus.tasks_stream("default"), WORKER_GROUP)
    return bool(pending["pending"] == 0)


async def _types(app: Running, execution_id: str) -> list[str]:
    rows = await app.resources.store.load(UUID(execution_id))
    return [r.type for r in rows]


async def test_stop_during_a_task_cancels_the_handler(
    app: Running, redis: aioredis.Redis, eventually: Any
) -> None:
    execution_id = await app.start_id("slow", {"seconds": 60})

    async def handler_running() -> bool:
        return not await _nothing_pending(app, redis)

    await eventually(handler_running)
    await _stop(app, execution_id)
    assert await _status(app, execution_id) in ("ABORTED", "RUNNING")  # read model lags
    await eventually(lambda: _nothing_pending(app, redis), timeout_s=5)
    assert await _no_timers(app, execution_id)
    types = await _types(app, execution_id)
    assert types[-1] == "ExecutionAborted" and "TaskSucceeded" not in types


async def test_stop_during_a_wait_removes_its_timer(app: Running, eventually: Any) -> None:
    execution_id = await app.start_id("wait", {})

    async def waiting() -> bool:
        return "WaitStateEntered" in await _types(app, execution_id)

    await eventually(waiting)
    assert not await _no_timers(app, execution_id)
    await _stop(app, execution_id)
    assert await _no_timers(app, execution_id)
    assert (await _types(app, execution_id))[-1] == "ExecutionAborted"


@pytest.mark.redis_cluster
async def test_stop_during_a_map_cancels_its_tasks(
    app: Running, redis: aioredis.Redis, eventually: Any
) -> None:
    execution_id = await app.start_id("map", [{"seconds": 60}] * 5)

    async def all_scheduled() -> bool:
        return (await _types(app, execution_id)).count("TaskScheduled") == 5

    await eventually(all_scheduled)
    await _stop(app, execution_id)
    await eventually(lambda: _nothing_pending(app, redis), timeout_s=5)
    assert await _no_timers(app, execution_id)
    types = await _types(app, execution_id)
    assert types[-1] == "ExecutionAborted" and "TaskSucceeded" not in types
