"""Bus contract suite on a real Redis (a fresh key prefix per test)."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.adapters.bus import Bus, Keys, Task, Trigger
from engine.adapters.store import StoredEvent

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def stored(execution_id: UUID, seq: int) -> StoredEvent:
    return StoredEvent(execution_id, seq, 100 + seq, "PassStateEntered", b'{"a":1}', T0, tx_id=7)


def test_keys_are_hash_tagged_per_partition() -> None:
    keys = Keys("steplog")
    assert keys.events(0) == "{steplog:p0}:events"
    assert keys.triggers(3) == "{steplog:p3}:triggers"
    assert keys.tasks("default") == "{steplog:q:default}:tasks"
    assert Keys.dead_letters(keys.triggers(3)) == "{steplog:p3}:triggers:dead"


def test_partition_of_is_crc32_of_the_id_text(bus: Bus) -> None:
    execution_id = uuid4()
    expected = zlib.crc32(str(execution_id).encode()) % 4
    assert bus.partition_of(execution_id) == bus.partition_of(str(execution_id).upper()) == expected
    assert {bus.partition_of(uuid4()) for _ in range(200)} == {0, 1, 2, 3}


async def test_ensure_group_is_idempotent_and_only_ignores_busygroup(
    bus: Bus, redis: aioredis.Redis
) -> None:
    stream = bus.events_stream(0)
    assert await bus.ensure_group(stream, "g") is True
    assert await bus.ensure_group(stream, "g") is False
    wrong_type = stream + ":string"
    await redis.set(wrong_type, "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await bus.ensure_group(wrong_type, "g")


async def test_publish_read_group_and_ack(bus: Bus, redis: aioredis.Redis) -> None:
    execution_id = uuid4()
    partition = bus.partition_of(execution_id)
    stream = bus.events_stream(partition)
    await bus.ensure_group(stream, "g")
    await bus.publish_events([stored(execution_id, 1), stored(execution_id, 2)])

    entries = await bus.read_group("g", "c1", [stream], count=10)
    assert [e.fields["seq"] for e in entries] == [b"1", b"2"]
    first = entries[0]
    assert first.stream == stream and first.deliveries == 1
    assert first.fields == {
        "v": b"1",
        "execution_id": str(execution_id).encode(),
        "seq": b"1",
        "position": b"101",
        "type": b"PassStateEntered",
        "timestamp": T0.isoformat().encode(),
        "data": b'{"a":1}',
    }
    assert await bus.read_group("g", "c1", [stream], count=10) == []
    assert await bus.ack(stream, "g", [e.id for e in entries]) == 2
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_read_group_blocks_then_returns_nothing(bus: Bus) -> None:
    stream = bus.triggers_stream(1)
    await bus.ensure_group(stream, "g")
    assert await bus.read_group("g", "c", [stream], block_ms=20) == []


async def test_triggers_and_tasks_go_to_their_streams(bus: Bus) -> None:
    execution_id = uuid4()
    triggers = bus.triggers_stream(bus.partition_of(execution_id))
    await bus.ensure_group(triggers, "engine")
    await bus.ensure_group(bus.tasks_stream("q1"), "workers")
    await bus.publish(
        triggers=[Trigger(execution_id, "begin", b'{"now":"x"}')],
        tasks=[Task("q1", {"execution_id": str(execution_id), "seq": 2, "data": b"{}"})],
    )
    entry_id = await bus.add_trigger(execution_id, "timer", b'{"timer_id":"t"}')
    await bus.add_task("q1", {"execution_id": str(execution_id), "seq": 5, "data": b"{}"})

    got = await bus.read_group("engine", "e1", [triggers])
    assert [(e.fields["kind"], e.fields["body"]) for e in got] == [
        (b"begin", b'{"now":"x"}'),
        (b"timer", b'{"timer_id":"t"}'),
    ]
    assert got[1].id == entry_id and got[0].fields["execution_id"] == str(execution_id).encode()
    tasks = await bus.read_group("workers", "w1", [bus.tasks_stream("q1")])
    assert [e.fields["seq"] for e in tasks] == [b"2", b"5"]
    with pytest.raises(ValueError):
        await bus.add_trigger(execution_id, "bogus", b"{}")


async def test_autoclaim_redelivers_with_delivery_counts_and_dead_letters(
    bus: Bus, redis: aioredis.Redis
) -> None:
    stream = bus.tasks_stream("default")
    await bus.ensure_group(stream, "workers")
    await bus.add_task("default", {"n": 1})
    await bus.add_task("default", {"n": 2})
    (a, b) = await bus.read_group("workers", "dead-worker", [stream])

    claimed = await bus.autoclaim(stream, "workers", "w2", min_idle_ms=0)
    assert [(e.id, e.deliveries) for e in claimed] == [(a.id, 2), (b.id, 2)]
    claimed = await bus.autoclaim(stream, "workers", "w3", min_idle_ms=0, count=1)
    assert [(e.id, e.deliveries, e.fields["n"]) for e in claimed] == [(a.id, 3, b"1")]
    assert await bus.autoclaim(stream, "workers", "w4", min_idle_ms=60_000) == []
    assert await bus.delivery_counts(stream, "workers", [a.id, b.id]) == {a.id: 3, b.id: 2}

    dead_id = await bus.dead_letter(claimed[0], "workers", "too many deliveries")
    dead = await redis.xrange(Keys.dead_letters(stream))
    assert [(i.decode(), f[b"n"], f[b"dead_reason"], f[b"dead_deliveries"]) for i, f in dead] == [
        (dead_id, b"1", b"too many deliveries", b"3")
    ]
    assert await bus.delivery_counts(stream, "workers", [a.id, b.id]) == {b.id: 2}


async def test_events_streams_are_trimmed_approximately(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    bus = Bus(redis, redis_prefix, partitions=1, events_maxlen=10)
    execution_id = uuid4()
    for start in range(0, 1000, 100):
        await bus.publish_events([stored(execution_id, s) for s in range(start + 1, start + 101)])
    length = await redis.xlen(bus.events_stream(0))
    assert 10 <= length < 1000


async def test_ping(bus: Bus) -> None:
    assert await bus.ping() is True
