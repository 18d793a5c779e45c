"""Worker contract on a real Redis: a task left by a dead worker is run by another after
the visibility timeout; a running task is not taken from a live worker; a task delivered
too often fails its attempt with Steplog.TaskDeliveryExceeded and is dead-lettered;
tasks of ended executions are skipped, and running ones cancelled when it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.loops.worker import DELIVERY_EXCEEDED, HandlerRegistry, TaskContext, Worker
from engine.messages import WORKER_GROUP, TaskMessage, TaskResult, decode_trigger

# On a Redis Cluster too: tasks, claims, renewals and dead letters each on one slot.
pytestmark = pytest.mark.redis_cluster


def task(execution_id: UUID, resource: str, input: Any = None, seq: int = 3) -> TaskMessage:
    return TaskMessage(
        execution_id=execution_id,
        seq=seq,
        task_id=f"{execution_id}:{seq}",
        state="Work",
        resource=resource,
        input=input,
    )


async def results(redis: aioredis.Redis, bus: Bus) -> list[TaskResult]:
    out = []
    for stream in bus.triggers_streams():
        for _, fields in await redis.xrange(stream):
            message = decode_trigger(fields[b"message"])
            if isinstance(message, TaskResult):
                out.append(message)
    return out


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def registry_with(calls: list[str], seconds: float = 0.0) -> HandlerRegistry:
    registry = HandlerRegistry()

    async def work(value: Any, ctx: TaskContext) -> Any:
        calls.append(ctx.idempotency_key)
        await asyncio.sleep(seconds)
        return value

    registry.register("work", work)
    return registry


async def test_a_task_of_a_dead_worker_runs_on_another_after_the_visibility_timeout(
    bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    stream = bus.tasks_stream("default")
    await bus.ensure_group(stream, WORKER_GROUP)
    execution_id = uuid4()
    await bus.add_task(task(execution_id, "work", {"n": 1}))
    # A worker reads it and dies (never reports, never acknowledges).
    assert len(await bus.read_group(WORKER_GROUP, "dead", [stream])) == 1
    calls: list[str] = []
    worker = Worker(bus, registry_with(calls), visibility_timeout_s=0.3, block_ms=50)
    async with running(worker):
        await eventually(lambda: _true(worker.completed == 1), timeout_s=5)
    assert calls == [f"{execution_id}:Work:0:{execution_id}:3"]
    assert [r.output for r in await results(redis, bus)] == [{"n": 1}]
    assert (await redis.xpending(stream, WORKER_GROUP))["pending"] == 0


async def test_a_live_worker_keeps_its_long_task(
    bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    calls: list[str] = []
    first = Worker(
        bus, registry_with(calls, 1.5), consumer="a", visibility_timeout_s=0.3, block_ms=50
    )
    second = Worker(bus, registry_with(calls), consumer="b", visibility_timeout_s=0.3, block_ms=50)
    async with running(first):
        await bus.add_task(task(uuid4(), "work"))
        await eventually(lambda: _true(len(calls) == 1))
        async with running(second):
            await eventually(lambda: _true(first.completed == 1), timeout_s=5)
    assert len(calls) == 1 and second.completed == 0


async def test_a_task_delivered_too_often_fails_its_attempt_and_is_dead_lettered(
    bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    stream = bus.tasks_stream("default")
    await bus.ensure_group(stream, WORKER_GROUP)
    execution_id = uuid4()
    await bus.add_task(task(execution_id, "work"))
    # Two workers took it and died (the second claimed it from the first).
    await bus.read_group(WORKER_GROUP, "dead-1", [stream])
    await bus.autoclaim(stream, WORKER_GROUP, "dead-2", 0)
    calls: list[str] = []
    worker = Worker(
        bus, registry_with(calls), visibility_timeout_s=0.2, max_deliveries=2, block_ms=50
    )
    async with running(worker):
        await eventually(lambda: _true(worker.dead_lettered == 1), timeout_s=5)
    assert calls == []
    [result] = await results(redis, bus)
    assert result.ok is False and result.error == DELIVERY_EXCEEDED
    assert result.task_id == f"{execution_id}:3"
    dead = await redis.xrange(bus.keys.dead_letters(stream))
    assert len(dead) == 1 and dead[0][1][b"dead_reason"] == b"too many deliveries"
    assert (await redis.xpending(stream, WORKER_GROUP))["pending"] == 0


async def test_tasks_of_ended_executions_are_skipped_or_cancelled(
    bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    ended: set[UUID] = set()

    async def ended_of(ids: Sequence[UUID]) -> set[UUID]:
        return ended & set(ids)

    gone, stopping = uuid4(), uuid4()
    ended.add(gone)
    calls: list[str] = []
    worker = Worker(
        bus, registry_with(calls, 30), ended=ended_of, ended_check_interval_s=0.05, block_ms=50
    )
    async with running(worker):
        await bus.add_task(task(gone, "work"))
        await bus.add_task(task(stopping, "work"))
        await eventually(lambda: _true(worker.skipped == 1 and len(calls) == 1))
        ended.add(stopping)  # the execution is stopped while its handler runs
        await eventually(lambda: _true(worker.cancelled == 1), timeout_s=5)
    assert await results(redis, bus) == []
    assert (await redis.xpending(bus.tasks_stream("default"), WORKER_GROUP))["pending"] == 0


async def test_the_group_is_created_again_after_a_flush(
    bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    calls: list[str] = []
    worker = Worker(bus, registry_with(calls), block_ms=50)
    async with running(worker):
        await bus.add_task(task(uuid4(), "work"))
        await eventually(lambda: _true(worker.completed == 1))
        await redis.delete(bus.tasks_stream("default"))  # what FLUSHALL does to this prefix
        await asyncio.sleep(0.2)
        await bus.add_task(task(uuid4(), "work"))
        await eventually(lambda: _true(worker.completed == 2), timeout_s=5)


async def _true(value: bool) -> bool:
    return value


async def test_a_wait_for_task_token_task_runs_its_base_handler_and_reports_no_result(
    bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    """The callback brings the result: the handler gets the token, its return value is
    not reported, and the task is acknowledged."""
    stream = bus.tasks_stream("default")
    await bus.ensure_group(stream, WORKER_GROUP)
    tokens: list[str] = []
    registry = HandlerRegistry()

    def hand_on(value: Any, ctx: TaskContext) -> Any:
        tokens.append(ctx.task_token)
        return "ignored"

    registry.register("notify", hand_on)
    execution_id = uuid4()
    message = msgspec.structs.replace(
        task(execution_id, "notify.waitForTaskToken"), task_token="stt1.token"
    )
    await bus.add_task(message)
    worker = Worker(bus, registry, visibility_timeout_s=0.3, block_ms=50)
    async with running(worker):
        await eventually(lambda: _true(worker.completed == 1), timeout_s=5)
    assert tokens == ["stt1.token"]
    assert await results(redis, bus) == []
    assert (await redis.xpending(stream, WORKER_GROUP))["pending"] == 0
