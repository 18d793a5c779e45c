"""Each trigger partition is read by one engine (engine.loops.partition_owners), on real
Redis and PostgreSQL: the live engines share the partitions, an engine that stops or
lapses hands its share to the others, and two engines given the same execution's
triggers do not conflict (one of them decides that execution)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from uuid import UUID

import prometheus_client
import pytest

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore
from engine.loops.engine_loop import Engine
from engine.loops.partition_owners import PartitionOwners
from engine.messages import Begin
from engine.service import EngineService

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
WAIT = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "End": True}}}


@pytest.mark.redis_cluster
async def test_live_engines_share_the_partitions_and_take_over_those_of_one_gone(
    bus: Bus, eventually: Any
) -> None:
    a, b = PartitionOwners(bus, "engine-a"), PartitionOwners(bus, "engine-b", ttl_s=0.3)
    assert await a.renew() == [0, 1, 2, 3]  # alone
    assert await b.renew() == [1, 3]
    assert await a.renew() == [0, 2]
    # A stopped engine leaves at once.
    await b.leave()
    assert await a.renew() == [0, 1, 2, 3]
    # A dead one (no renewals) lapses after its time to live.
    assert await b.renew() == [1, 3]
    assert await a.renew() == [0, 2]
    assert await eventually(lambda: _renewed(a, [0, 1, 2, 3]), timeout_s=3)
    assert a.members == ["engine-a"]


async def _renewed(owners: PartitionOwners, expected: list[int]) -> bool:
    return await owners.renew() == expected


@pytest.mark.redis_cluster
async def test_two_engines_given_one_executions_triggers_at_once_do_not_conflict(
    store: EventStore, bus: Bus, eventually: Any
) -> None:
    service = EngineService(store)
    await service.register("default", "waits", WAIT)
    engines = [Engine(service, bus, consumer=name, block_ms=50) for name in ("e-1", "e-2")]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(engine.run(stop)) for engine in engines]
    try:
        # Both members, each with its share (the first one in took every partition).
        assert await eventually(lambda: _shares_settled(engines, bus.partitions), timeout_s=5)
        conflicts_before = _conflicts()
        ids = []
        for i in range(24):
            record, *_ = await service.start("default", "waits", {"i": i}, None, T0)
            ids.append(record.execution_id)
        # Every execution's Begin three times over, as redelivery or a retried publish
        # would give it: one engine handles all three in order (two are obsolete).
        for _ in range(3):
            for execution_id in ids:
                await bus.add_trigger(execution_id, Begin())
        handled = 3 * len(ids)
        assert await eventually(lambda: _handled(engines, handled), timeout_s=10), [
            e.handled for e in engines
        ]
        for execution_id in ids:
            state = await service.state_at(execution_id)
            assert state.status == "RUNNING" and state.seq == 2  # started, the Wait entered
        assert _conflicts() == conflicts_before
        # Both engines did a share of the work.
        assert all(engine.handled > 0 for engine in engines)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # Stopped engines left: nothing of theirs is waited for.
    assert await bus.engine_members("probe", 1, leave=True) == []


async def _shares_settled(engines: list[Engine], partitions: int) -> bool:
    shares = [sorted(e.owners.owned) for e in engines]
    return all(len(e.owners.members) == len(engines) for e in engines) and sorted(
        p for share in shares for p in share
    ) == list(range(partitions))


async def _handled(engines: list[Engine], count: int) -> bool:
    return sum(e.handled for e in engines) >= count


def _conflicts() -> float:
    return prometheus_client.REGISTRY.get_sample_value("steplog_append_conflicts_total") or 0.0


@pytest.mark.redis_cluster
async def test_the_partitions_of_an_engine_that_died_are_read_once_its_membership_lapses(
    store: EventStore, bus: Bus, eventually: Any
) -> None:
    service = EngineService(store)
    await service.register("default", "waits", WAIT)
    # An engine that joined, then died: it never renews, and never leaves.
    assert await bus.engine_members("e-0-dead", 1.0) == ["e-0-dead"]
    engine = Engine(service, bus, consumer="e-1", block_ms=50, membership_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:
        # Alive beside the dead one, it reads only its share (partitions 1 and 3).
        assert await eventually(lambda: _owns(engine, [1, 3]), timeout_s=5)
        ids: list[UUID] = []
        while len(ids) < 8 or {bus.partition_of(i) for i in ids} != {0, 1, 2, 3}:
            record, *_ = await service.start("default", "waits", {"i": len(ids)}, None, T0)
            ids.append(record.execution_id)
            await bus.add_trigger(record.execution_id, Begin())
        # Once the dead one's membership lapsed, every partition is read: all handled.
        assert await eventually(lambda: _handled([engine], len(ids)), timeout_s=10)
        assert engine.owners.owned == [0, 1, 2, 3] and engine.owners.members == ["e-1"]
        for execution_id in ids:
            assert (await service.state_at(execution_id)).seq == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _owns(engine: Engine, partitions: list[int]) -> bool:
    return engine.owners.owned == partitions
