"""Claims are kept alive independently of slow queries (issue 14 item 3).

Two workers on one queue, a long-running task in the first, and a lock held on the
events table (the worker's check for ended executions reads it) for longer than the
visibility timeout: the first worker's heartbeat on its running tasks runs on its own
schedule, so the second never claims the task and the attempt runs exactly once. The
engine keeps the trigger entries it holds alive the same way while an append hangs.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore, NewEvent
from engine.loops.worker import Worker
from engine.messages import WORKER_GROUP
from tests.conftest import Eventually
from tests.integration.test_relay import T0
from tests.integration.test_worker import registry_with, results, running, task

VISIBILITY_S = 2.0
LOCK_S = 5.0  # longer than the visibility timeout


async def started_execution(store: EventStore) -> UUID:
    started = NewEvent("ExecutionStarted", msgspec.json.encode({"type": "ExecutionStarted"}), T0)
    record, _ = await store.start_execution("default", "wf", 1, uuid4(), "x", b"{}", started)
    return record.execution_id


async def test_a_table_lock_longer_than_the_visibility_timeout_runs_the_attempt_once(
    database_url: str, store: EventStore, bus: Bus, redis: aioredis.Redis, eventually: Eventually
) -> None:
    execution_id = await started_execution(store)
    calls: list[str] = []
    registry = registry_with(calls, seconds=LOCK_S + 3)

    def worker(name: str) -> Worker:
        return Worker(
            bus,
            registry,
            consumer=name,
            block_ms=100,
            visibility_timeout_s=VISIBILITY_S,
            ended=store.ended_executions,
            ended_check_interval_s=0.2,
        )

    first, second = worker("first"), worker("second")
    await bus.add_task(task(execution_id, "work", {"n": 1}))
    async with running(first):

        async def first_runs_it() -> bool:
            return len(calls) == 1

        await eventually(first_runs_it)
        async with running(second):
            locker = await asyncpg.connect(database_url)
            try:
                async with locker.transaction():
                    await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                    # The lock is the fault: held for its length while both workers run.
                    await asyncio.sleep(LOCK_S)
            finally:
                await locker.close()

            async def reported() -> bool:
                return first.completed == 1

            await eventually(reported, timeout_s=10)
            # Time for the second worker to claim the (acknowledged) task, if it could.
            await asyncio.sleep(VISIBILITY_S)
    assert calls == [f"{execution_id}:Work:0:{execution_id}:3"]
    assert second.started == 0
    assert [r.output for r in await results(redis, bus)] == [{"n": 1}]
    assert (await redis.xpending(bus.tasks_stream("default"), WORKER_GROUP))["pending"] == 0


async def _any(value: Any) -> Any:
    return value
