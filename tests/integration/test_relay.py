"""Relay contract: every committed event reaches Redis at least once, in per-execution
order, with its begin trigger and task entries; one leader; crash-safe checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from engine import messages
from engine.adapters.bus import REDIS_ERRORS, Bus
from engine.adapters.store import EventStore, GlobalPosition, NewEvent, StoredEvent
from engine.core import events as ev
from engine.loops.relay import Relay

# On a Redis Cluster too: a relay batch spreads over streams of several slots.
pytestmark = pytest.mark.redis_cluster

T0 = datetime(2024, 1, 1, 12, tzinfo=UTC)


def event(type_: str = "PassStateEntered", **data: object) -> NewEvent:
    return NewEvent(type_, msgspec.json.encode({"type": type_, **data}), T0)


def scheduled(task_id: str, queue: str = "default") -> NewEvent:
    task = ev.TaskScheduled(name="Work", task_id=task_id, resource="test:echo", queue=queue)
    return NewEvent("TaskScheduled", ev.encode_event(task), T0)


async def start(store: EventStore, name: str) -> UUID:
    record, _ = await store.start_execution(
        "default", "wf", 1, uuid4(), name, b"{}", event("ExecutionStarted")
    )
    return record.execution_id


@asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 5)


async def published(redis: aioredis.Redis, bus: Bus) -> list[tuple[UUID, int, str]]:
    """(execution_id, seq, type) of every events-stream entry, stream by stream."""
    out: list[tuple[UUID, int, str]] = []
    for stream in bus.events_streams():
        for _, fields in await redis.xrange(stream):
            out.append(
                (
                    UUID(fields[b"execution_id"].decode()),
                    int(fields[b"seq"]),
                    fields[b"type"].decode(),
                )
            )
    return out


async def described(redis: aioredis.Redis, bus: Bus) -> str:
    """Every events-stream entry with its stream and id (when a count is off: the ids'
    milliseconds tell how far apart two copies were added), and Redis errors counted."""
    lines = [
        f"{stream} {entry_id.decode()} {fields[b'execution_id'].decode()} {int(fields[b'seq'])}"
        for stream in bus.events_streams()
        for entry_id, fields in await redis.xrange(stream)
    ]
    errors = {
        kind: REDIS_ERRORS.labels(kind)._value.get()
        for kind in ("unavailable", "missing_group", "refused")
    }
    return "\n".join([*lines, f"redis errors counted in this process: {errors}"])


async def streams_of(redis: aioredis.Redis, bus: Bus) -> list[tuple[str, UUID]]:
    """(stream, execution_id) of every events-stream entry."""
    return [
        (stream, UUID(fields[b"execution_id"].decode()))
        for stream in bus.events_streams()
        for _, fields in await redis.xrange(stream)
    ]


def counter(redis: aioredis.Redis, bus: Bus, n: int) -> Callable[[], object]:
    async def enough() -> bool:
        return len(await published(redis, bus)) >= n

    return enough


async def test_publishes_every_event_once_in_order_with_triggers_and_tasks(
    store: EventStore, bus: Bus, pool: asyncpg.Pool, redis: aioredis.Redis, eventually
) -> None:  # type: ignore[no-untyped-def]
    executions = [await start(store, f"e{i}") for i in range(5)]
    for i, execution_id in enumerate(executions):
        task = scheduled(f"t{i}", queue="q1") if i % 2 else scheduled(f"t{i}")
        await store.append(execution_id, 1, [event(), task, event()])
    relay = Relay(store, bus, pool, batch_size=4, poll_interval_s=0.05)
    async with running(relay):
        await eventually(counter(redis, bus, 20))
        # Written while the relay runs: picked up too.
        await store.append(executions[0], 4, [event("ExecutionSucceeded")])
        await eventually(counter(redis, bus, 21))

    entries = await published(redis, bus)
    assert len(entries) == len(set(entries)) == 21
    for execution_id in executions:
        seqs = [seq for x, seq, _ in entries if x == execution_id]
        assert seqs == list(range(1, len(seqs) + 1))
        streams = {stream for stream, x in await streams_of(redis, bus) if x == execution_id}
        assert streams == {bus.events_stream(bus.partition_of(execution_id))}

    begins = [
        (UUID(f[b"execution_id"].decode()), messages.decode_trigger(f[b"message"]))
        for s in bus.triggers_streams()
        for _, f in await redis.xrange(s)
    ]
    assert sorted(begins, key=str) == sorted([(x, messages.Begin()) for x in executions], key=str)
    q1 = await redis.xrange(bus.tasks_stream("q1"))
    default = await redis.xrange(bus.tasks_stream("default"))
    assert len(q1) == 2 and len(default) == 3
    task = messages.decode_task(q1[0][1][b"message"])
    assert task.seq == 3 and task.task_id == "t1" and task.queue == "q1"
    assert task.execution_id == executions[1]
    assert task.state == "Work" and task.resource == "test:echo"

    checkpoint = await pool.fetchrow("SELECT tx_id, position FROM relay_checkpoint")
    last = (await store.read_all(GlobalPosition(), 100))[-1].global_position
    assert GlobalPosition(checkpoint["tx_id"], checkpoint["position"]) == last == relay.position


async def test_wakes_on_notify_without_waiting_for_the_poll(
    store: EventStore, bus: Bus, pool: asyncpg.Pool, redis: aioredis.Redis, eventually
) -> None:  # type: ignore[no-untyped-def]
    relay = Relay(store, bus, pool, poll_interval_s=30)
    async with running(relay):

        async def leading() -> bool:
            return relay.is_leader

        await eventually(leading)
        await asyncio.sleep(0.05)  # let it reach its wait
        await start(store, "late")
        await eventually(counter(redis, bus, 1), timeout_s=2)


class CrashAfterPublish(Relay):
    """Publishes, then hangs where it would save the checkpoint: a crash there."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.published = asyncio.Event()

    async def _publish(self, events: Sequence[StoredEvent]) -> None:
        await super()._publish(events)
        self.published.set()
        await asyncio.Event().wait()


async def test_a_crash_between_publish_and_checkpoint_republishes(
    store: EventStore, bus: Bus, pool: asyncpg.Pool, redis: aioredis.Redis, eventually
) -> None:  # type: ignore[no-untyped-def]
    a = await start(store, "a")
    b = await start(store, "b")
    await store.append(a, 1, [event(), event()])

    crashing = CrashAfterPublish(store, bus, pool, poll_interval_s=0.05)
    task = asyncio.create_task(crashing.run(asyncio.Event()))
    await asyncio.wait_for(crashing.published.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(await published(redis, bus)) == 4
    # Still at the beginning; the crashed leader's lease is given up (as a restart of
    # its process would see it expire).
    assert await pool.fetchval("SELECT position FROM relay_checkpoint") == 0
    await pool.execute("UPDATE relay_checkpoint SET lease_until = now() - interval '1 s'")

    await store.append(b, 1, [event()])
    async with running(Relay(store, bus, pool, poll_interval_s=0.05)):
        await eventually(counter(redis, bus, 9))

    entries = await published(redis, bus)
    assert sorted(set(entries)) == sorted(
        [
            (a, 1, "ExecutionStarted"),
            (a, 2, "PassStateEntered"),
            (a, 3, "PassStateEntered"),
            (b, 1, "ExecutionStarted"),
            (b, 2, "PassStateEntered"),
        ]
    )
    assert len(entries) == 9  # the first four twice: at least once, never lost
    for execution_id in (a, b):
        seqs = [s for x, s, _ in entries if x == execution_id]
        deduped = list(dict.fromkeys(seqs))
        assert deduped == sorted(deduped)


async def test_one_leader_publishes_and_a_standby_takes_over(
    store: EventStore, bus: Bus, pool: asyncpg.Pool, redis: aioredis.Redis, eventually
) -> None:  # type: ignore[no-untyped-def]
    first = Relay(store, bus, pool, poll_interval_s=0.05)
    second = Relay(store, bus, pool, poll_interval_s=0.05)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first_task = asyncio.create_task(first.run(stop_first))

    async def first_leads() -> bool:
        return first.is_leader

    await eventually(first_leads)
    second_task = asyncio.create_task(second.run(stop_second))
    try:
        for i in range(5):
            await start(store, f"e{i}")
        await eventually(counter(redis, bus, 5))
        await asyncio.sleep(0.2)  # time for a second leader to double-publish, if there were one
        assert not second.is_leader
        assert len(await published(redis, bus)) == 5, await described(redis, bus)

        stop_first.set()
        await asyncio.wait_for(first_task, 5)

        async def second_leads() -> bool:
            return second.is_leader

        await eventually(second_leads)
        await start(store, "after")
        await eventually(counter(redis, bus, 6))
        await asyncio.sleep(0.1)
        assert len(await published(redis, bus)) == 6  # continued from the checkpoint
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.wait_for(asyncio.gather(first_task, second_task), 5)
