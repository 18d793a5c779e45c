"""Timer service contract: a due timer fires at most once per due time across processes,
late rather than never, again when its due time moves, after a firer died holding its
lease, and after recovery re-armed it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import msgspec
import redis.asyncio as aioredis

from engine import messages
from engine.adapters.bus import Bus
from engine.adapters.store import EventStore, NewEvent, TimerSpec
from engine.loops.timers import TimerService

T0 = datetime(2024, 1, 1, 12, tzinfo=UTC)


def event(type_: str = "PassStateEntered") -> NewEvent:
    return NewEvent(type_, msgspec.json.encode({"type": type_}), T0)


async def start(store: EventStore) -> UUID:
    record, _ = await store.start_execution(
        "default", "wf", 1, uuid4(), str(uuid4()), b"{}", event("ExecutionStarted")
    )
    return record.execution_id


async def fired(redis: aioredis.Redis, bus: Bus) -> list[str]:
    """timer_id of every timer trigger on the bus."""
    out = []
    for stream in bus.triggers_streams():
        for _, fields in await redis.xrange(stream):
            message = messages.decode_trigger(fields[b"message"])
            if isinstance(message, messages.TimerFired):
                out.append(message.timer_id)
    return sorted(out)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_concurrent_services_fire_each_due_timer_once(
    store: EventStore, bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = await start(store)
    timers = [TimerSpec(f"t{i:03d}", T0 + timedelta(milliseconds=i)) for i in range(200)]
    await store.append(execution_id, 1, [event()], set_timers=timers)
    clock = Clock(T0 + timedelta(seconds=1))
    services = [TimerService(store, bus, batch_size=17, clock=clock) for _ in range(5)]
    barrier = asyncio.Barrier(len(services))

    async def drain(service: TimerService) -> None:
        await barrier.wait()
        while await service.tick():
            pass

    await asyncio.gather(*(drain(s) for s in services))
    assert await fired(redis, bus) == [t.timer_id for t in timers]
    assert sum(s.fired for s in services) == 200
    # Nothing fires twice later either.
    clock.now += timedelta(hours=1)
    assert await services[0].tick() == 0


async def test_a_timer_due_while_no_service_ran_fires_late(
    store: EventStore, bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = await start(store)
    await store.append(execution_id, 1, [event()], set_timers=[TimerSpec("late", T0)])
    service = TimerService(store, bus, clock=Clock(T0 + timedelta(days=3)))
    assert await service.tick() == 1
    assert await fired(redis, bus) == ["late"]


async def test_a_moved_timer_fires_again_at_its_new_due_time(
    store: EventStore, bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = await start(store)
    await store.append(execution_id, 1, [event()], set_timers=[TimerSpec("hb", T0)])
    clock = Clock(T0)
    service = TimerService(store, bus, clock=clock)
    assert await service.tick() == 1
    await store.append(
        execution_id, 2, [event()], set_timers=[TimerSpec("hb", T0 + timedelta(seconds=5))]
    )
    assert await service.tick() == 0  # not due yet at its new time
    clock.now = T0 + timedelta(seconds=5)
    assert await service.tick() == 1
    assert await service.tick() == 0
    assert await fired(redis, bus) == ["hb", "hb"]


async def test_a_claim_of_a_dead_firer_expires_and_another_fires(
    store: EventStore, bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = await start(store)
    await store.append(execution_id, 1, [event()], set_timers=[TimerSpec("t", T0)])
    # A firer claims, then dies before adding the trigger.
    assert len(await store.claim_due_timers(T0, 10, lease_s=10)) == 1
    clock = Clock(T0 + timedelta(seconds=5))
    service = TimerService(store, bus, lease_s=10, clock=clock)
    assert await service.tick() == 0  # the lease still holds
    clock.now = T0 + timedelta(seconds=11)
    assert await service.tick() == 1
    assert await fired(redis, bus) == ["t"]


async def test_rearm_fires_fired_timers_again_and_beats_a_late_mark(
    store: EventStore, bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = await start(store)
    await store.append(
        execution_id, 1, [event()], set_timers=[TimerSpec("a", T0), TimerSpec("b", T0)]
    )
    service = TimerService(store, bus, clock=Clock(T0))
    assert await service.tick() == 2
    # "b" is claimed by a firer that has sent its trigger into a Redis that is then
    # flushed; recovery re-arms before the firer records it: the late record is refused.
    await store.append(execution_id, 2, [], set_timers=[TimerSpec("b", T0 + timedelta(seconds=1))])
    claimed = await store.claim_due_timers(T0 + timedelta(seconds=1), 10, lease_s=10)
    assert [t.timer_id for t in claimed] == ["b"]
    assert await store.rearm_timers() == 2
    await store.mark_timers_fired(claimed)
    service.clock = Clock(T0 + timedelta(seconds=1))
    assert await service.tick() == 2
    assert await fired(redis, bus) == ["a", "a", "b", "b"]
