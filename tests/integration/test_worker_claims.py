"""Claims are kept alive independently of slow queries (issue 14 item 3).

Two workers on one queue, a long-running task in the first, and a lock held on the
events table (the worker's check for ended executions reads it) for longer than the
visibility timeout: the first worker's heartbeat on its running tasks runs on its own
schedule, so the second never claims the task and the attempt runs exactly once. The
engine keeps the trigger entries it holds alive the same way while an append hangs.
A Redis paused for longer than the visibility timeout is the other side: the claim
cannot be renewed, so the first worker gives the attempt up before the second can
claim it, and the attempt never runs in both at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import redis.asyncio as aioredis

from engine.adapters.bus import Bus, Malformed
from engine.adapters.store import EventStore, NewEvent
from engine.loops.engine_loop import Engine
from engine.loops.worker import HandlerRegistry, TaskContext, Worker, _Running
from engine.messages import WORKER_GROUP, Begin, TaskResult
from engine.service import EngineService
from tests.conftest import Eventually
from tests.integration.test_relay import T0
from tests.integration.test_worker import registry_with, results, running, task

VISIBILITY_S = 2.0
LOCK_S = 5.0  # longer than the visibility timeout
PAUSE_S = 3 * VISIBILITY_S


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


PASS = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}


async def test_an_engine_stuck_on_a_locked_table_keeps_its_trigger(
    database_url: str, store: EventStore, bus: Bus, eventually: Eventually
) -> None:
    """The engine holding a trigger waits for a lock longer than the visibility timeout:
    the other engine does not claim the trigger and decide it a second time."""
    service = EngineService(store)
    await service.register("default", "wf", PASS)
    record, *_ = await service.start("default", "wf", {}, None, T0)
    execution_id = record.execution_id

    def engine(name: str) -> Engine:
        return Engine(service, bus, consumer=name, block_ms=100, visibility_timeout_s=VISIBILITY_S)

    first, second = engine("first"), engine("second")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(first.run(stop))]
    locker = await asyncpg.connect(database_url)
    try:
        await first.ensure_groups()
        async with locker.transaction():
            await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            await bus.add_trigger(execution_id, Begin())

            async def first_holds_it() -> bool:
                return execution_id in first.deciding

            await eventually(first_holds_it)
            tasks.append(asyncio.create_task(second.run(stop)))
            await asyncio.sleep(LOCK_S)  # the lock is the fault: held for its length

        async def succeeded() -> bool:
            state = await service.state_at(execution_id)
            return state.status == "SUCCEEDED" and first.handled + second.handled >= 1

        await eventually(succeeded, timeout_s=10)
        await asyncio.sleep(VISIBILITY_S)  # time for a second decision, if there were one
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
        await locker.close()
    assert (first.handled, second.handled) == (1, 0)


async def test_renew_leaves_an_entry_another_consumer_has_claimed(
    bus: Bus, redis: aioredis.Redis
) -> None:
    stream = bus.tasks_stream("renew")
    await bus.ensure_group(stream, WORKER_GROUP)
    first_id = await redis.xadd(stream, {"n": "1"})
    second_id = await redis.xadd(stream, {"n": "2"})
    await redis.xreadgroup(WORKER_GROUP, "first", {stream: ">"})
    await asyncio.sleep(0.05)
    # The second consumer claims one entry (as XAUTOCLAIM would after an outage).
    await redis.xclaim(stream, WORKER_GROUP, "second", 0, [second_id])
    ids = [first_id.decode(), second_id.decode()]
    assert await bus.renew(stream, WORKER_GROUP, "first", ids) == {first_id.decode()}
    owners = {
        row["message_id"].decode(): row["consumer"].decode()
        for row in await redis.xpending_range(stream, WORKER_GROUP, "-", "+", 10)
    }
    assert owners == {first_id.decode(): "first", second_id.decode(): "second"}
    assert await bus.renew(stream, WORKER_GROUP, "first", []) == set()


async def test_a_redis_pause_longer_than_the_visibility_timeout_never_runs_an_attempt_twice_at_once(
    store: EventStore, bus: Bus, redis: aioredis.Redis, eventually: Eventually
) -> None:
    """Nobody can renew a claim while Redis is paused: the first worker cancels its
    handler before the claim could lapse, the second claims the entry after the pause
    and runs the attempt (or the first does, later), and the two runs do not overlap."""
    execution_id = await started_execution(store)
    runs: list[tuple[str, float, float]] = []  # worker, began, ended (also when cancelled)

    def registry(name: str) -> HandlerRegistry:
        registry = HandlerRegistry()

        async def work(value: Any, ctx: TaskContext) -> Any:
            began = time.monotonic()
            try:
                await asyncio.sleep(PAUSE_S + VISIBILITY_S)
            finally:
                runs.append((name, began, time.monotonic()))
            return value

        registry.register("work", work)
        return registry

    def worker(name: str) -> Worker:
        return Worker(
            bus, registry(name), consumer=name, block_ms=100, visibility_timeout_s=VISIBILITY_S
        )

    first, second = worker("first"), worker("second")
    await bus.add_task(task(execution_id, "work", {"n": 1}))
    async with running(first):

        async def first_runs_it() -> bool:
            return first.started == 1

        await eventually(first_runs_it)
        async with running(second):
            await redis.execute_command("CLIENT", "PAUSE", str(int(PAUSE_S * 1000)))

            async def reported() -> bool:
                return first.completed + second.completed == 1

            await eventually(reported, timeout_s=PAUSE_S + 4 * VISIBILITY_S + 10)
    assert first.lapsed == 1
    # Run again after the pause by whichever worker claimed the entry: the second (its
    # claim came first), or the first itself (its renewal, queued during the pause, came
    # first: the entry is still its own, and it claims it again at once).
    (name, _, first_ended), (_, again_began, _) = runs
    assert name == "first" and first_ended < again_began
    assert [r.output for r in await results(redis, bus)] == [{"n": 1}]
    assert (await redis.xpending(bus.tasks_stream("default"), WORKER_GROUP))["pending"] == 0


async def test_a_worker_runs_again_at_once_an_attempt_it_gave_up_in_a_pause(
    store: EventStore, bus: Bus, redis: aioredis.Redis, eventually: Eventually
) -> None:
    """A lone worker cancels its handler when Redis, paused, cannot confirm the claim.
    The renewal it had sent meanwhile runs when the pause ends and makes the entry look
    busy for another visibility timeout, so that no worker would claim it before then;
    the entry is still this worker's, though, and it claims it again and runs it as soon
    as Redis answers (session 20: on CI an attempt waited that long after the pause and
    its execution timed out)."""
    visibility_s, pause_s = 4.0, 4.0  # longer than the three quarters the fence allows
    execution_id = await started_execution(store)
    runs: list[tuple[float, float]] = []  # began, ended (also when cancelled)
    registry = HandlerRegistry()

    async def work(value: Any, ctx: TaskContext) -> Any:
        began = time.monotonic()
        try:
            if not runs:
                await asyncio.sleep(60)  # the first run outlasts the pause: it is cancelled
            return value
        finally:
            runs.append((began, time.monotonic()))

    registry.register("work", work)
    worker = Worker(bus, registry, consumer="lone", block_ms=100, visibility_timeout_s=visibility_s)
    await bus.add_task(task(execution_id, "work", {"n": 1}))
    async with running(worker):

        async def runs_it() -> bool:
            return worker.started == 1

        await eventually(runs_it)
        await redis.execute_command("CLIENT", "PAUSE", str(int(pause_s * 1000)))
        paused_until = time.monotonic() + pause_s

        async def reported() -> bool:
            return worker.completed == 1

        await eventually(reported, timeout_s=pause_s + 3 * visibility_s + 10)
    assert worker.lapsed == 1 and worker.started == 2
    (_, first_ended), (again_began, _) = runs
    assert first_ended < again_began
    # Without the claim again, not before the queued renewal's visibility timeout.
    assert again_began - paused_until < visibility_s / 2
    assert [r.output for r in await results(redis, bus)] == [{"n": 1}]
    assert (await redis.xpending(bus.tasks_stream("default"), WORKER_GROUP))["pending"] == 0


async def test_reclaim_takes_only_entries_still_pending_for_the_consumer(
    bus: Bus, redis: aioredis.Redis
) -> None:
    """`Bus.reclaim_tasks` claims again (a delivery counted) what is still the consumer's,
    and leaves what another consumer claimed, what was acknowledged and what was trimmed."""
    stream = bus.tasks_stream("reclaim")
    await bus.ensure_group(stream, WORKER_GROUP)
    messages = [msgspec.structs.replace(task(uuid4(), "work"), queue="reclaim") for _ in range(4)]
    for message in messages:
        await bus.add_task(message)
    read = await bus.read_tasks(WORKER_GROUP, "first", [stream], count=4)
    mine, taken, acked, trimmed = (d.entry.id for d in read)
    await redis.xclaim(stream, WORKER_GROUP, "second", 0, [taken])
    await bus.ack(stream, WORKER_GROUP, [acked])
    await redis.xdel(stream, trimmed)
    claimed = await bus.reclaim_tasks(stream, WORKER_GROUP, "first", [mine, taken, acked, trimmed])
    assert [(d.entry.id, d.entry.deliveries) for d in claimed] == [(mine, 2)]
    (delivery,) = claimed
    assert not isinstance(delivery, Malformed) and delivery.message == messages[0]
    owners = {
        row["message_id"].decode(): row["consumer"].decode()
        for row in await redis.xpending_range(stream, WORKER_GROUP, "-", "+", 10)
    }
    assert owners[mine] == "first" and owners[taken] == "second" and acked not in owners
    assert await bus.reclaim_tasks(stream, WORKER_GROUP, "first", []) == []


async def test_a_late_renewal_answer_never_shortens_a_claim_nor_gives_a_newer_one_up(
    bus: Bus,
) -> None:
    """A renewal queued in a paused Redis answers after the pause, when the worker may have
    read, claimed or confirmed the same entries again: its answer is about the time it
    was sent. Taking it as the truth of now (the lease set back to the send time plus the
    visibility timeout, or an entry "claimed by another worker") cancelled handlers that
    had just started on a fresh claim, and an attempt ran three times (test_faults, the
    Redis pause window)."""
    worker = Worker(bus, HandlerRegistry(), queue="late", visibility_timeout_s=3.0)
    now = asyncio.get_running_loop().time()
    worker._held = {"1-0": now + 3.0, "2-0": now + 3.0, "3-0": now - 1.0}
    # The answer to a renewal sent 2 s ago: 1-0 and 3-0 kept, 2-0 not this worker's then.
    worker._renewed(["1-0", "2-0", "3-0"], {"1-0", "3-0"}, now - 2.0)
    assert worker._held["1-0"] == now + 3.0  # confirmed since: not set back to now + 1
    assert worker._held["2-0"] == now + 3.0  # confirmed since: not given up
    assert worker._held["3-0"] == now + 1.0  # extended
    # An answer to a renewal sent after those confirmations is the newest word.
    worker._renewed(["1-0", "2-0"], {"1-0"}, now + 0.5)
    assert worker._held["1-0"] == now + 3.5
    assert "2-0" not in worker._held
    assert worker.lapsed == 0  # (no handler was running to cancel)


async def test_a_renewal_that_misses_an_entry_being_reported_cancels_nothing(bus: Bus) -> None:
    """An attempt whose result is being reported is acknowledged at the report's end;
    a renewal that reached Redis after the acknowledgement and answered before the
    runner ended found the entry gone from the pending list. Taken as "another worker
    has claimed it", it cancelled the finished runner and counted a lapsed claim: a
    warning per task and a false alarm on steplog_task_claims_lapsed_total under load
    (10,000 task3 executions in one process: 11 of them)."""
    worker = Worker(bus, HandlerRegistry(), queue="reported", visibility_timeout_s=3.0)
    now = asyncio.get_running_loop().time()
    runners = {entry_id: asyncio.create_task(asyncio.sleep(60)) for entry_id in ("1-0", "2-0")}
    try:
        for entry_id, runner in runners.items():
            worker._held[entry_id] = now + 3.0
            worker._running[entry_id] = _Running(uuid4(), runner, "test:echo", 1, 0.0)
        worker._reporting.add("1-0")
        worker._renewed(["1-0", "2-0"], set(), now + 0.5)
        assert "1-0" in worker._held and not runners["1-0"].cancelling()
        # 2-0, not being reported, was given up and its handler cancelled.
        assert "2-0" not in worker._held and runners["2-0"].cancelling()
        assert worker.lapsed == 1
    finally:
        for runner in runners.values():
            runner.cancel()
        await asyncio.gather(*runners.values(), return_exceptions=True)


async def test_an_entry_whose_report_acknowledged_it_is_no_longer_held(
    bus: Bus, redis: aioredis.Redis
) -> None:
    """The other half of the window above: the report done (the entry acknowledged),
    the runner not ended yet. A renewal answered then missed the entry too, and no
    longer found it being reported (seen under load, after the first fix)."""
    worker = Worker(bus, HandlerRegistry(), queue="settled", visibility_timeout_s=3.0)
    await bus.ensure_group(worker.stream, WORKER_GROUP)
    message = msgspec.structs.replace(task(uuid4(), "work"), queue="settled")
    await bus.add_task(message)
    (delivery,) = await bus.read_tasks(WORKER_GROUP, worker.consumer, [worker.stream])
    assert not isinstance(delivery, Malformed)
    now = asyncio.get_running_loop().time()
    worker._held[delivery.entry.id] = now + 3.0
    result = TaskResult(task_id=message.task_id, ok=True, output=1)
    report = worker._start_report(delivery, result)
    assert delivery.entry.id in worker._reporting
    assert await report is True
    await asyncio.sleep(0)  # (its done callbacks)
    assert delivery.entry.id not in worker._held
    assert delivery.entry.id not in worker._reporting
    worker._renewed([delivery.entry.id], set(), now + 0.5)
    assert worker.lapsed == 0
    assert [r.task_id for r in await results(redis, bus)] == [message.task_id]
    assert (await redis.xpending(worker.stream, WORKER_GROUP))["pending"] == 0
