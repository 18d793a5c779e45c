"""Bus contract suite on a real Redis (a fresh key prefix per test)."""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio import RedisCluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from engine import messages
from engine.adapters.bus import (
    PUBLISH_TOKEN_TTL_MS,
    Bus,
    Keys,
    Malformed,
    PartlyPublished,
    StreamEntry,
    TaskDelivery,
    TriggerDelivery,
    read_task,
    read_trigger,
    translate,
)
from engine.adapters.store import StoredEvent
from engine.core import events as ev
from engine.errors import BusError, MissingGroup, Unavailable
from tests.conftest import Eventually

# Every test on a Redis Cluster too: the keys of each command, MULTI and script share a slot.
pytestmark = pytest.mark.redis_cluster

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def stored(execution_id: UUID, seq: int) -> StoredEvent:
    return StoredEvent(execution_id, seq, 100 + seq, "PassStateEntered", b'{"a":1}', T0, tx_id=7)


def task(execution_id: UUID, seq: int, queue: str = "default") -> messages.TaskMessage:
    return messages.TaskMessage(
        execution_id=execution_id,
        seq=seq,
        queue=queue,
        task_id=f"{execution_id}:{seq}",
        state="Work",
        resource="test:echo",
        input={"n": seq},
    )


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
    with pytest.raises(BusError, match="WRONGTYPE") as raised:
        await bus.ensure_group(wrong_type, "g")
    assert isinstance(raised.value.__cause__, redis_errors.ResponseError)


async def test_a_publish_refused_in_part_for_any_reason_is_retried_for_the_rest_only(
    bus: Bus, redis: aioredis.Redis
) -> None:
    """A stream refused by a reply that is no outage (WRONGTYPE here) while another
    passed: `PartlyPublished` carries only the refused part, so the caller's retry never
    adds again what passed (before, the refusal was raised as it is and the retry
    published the whole batch again)."""
    execution_id = uuid4()
    partition = bus.partition_of(execution_id)
    await redis.set(bus.triggers_stream(partition), "not a stream")
    event = stored(execution_id, 1)
    with pytest.raises(PartlyPublished, match="WRONGTYPE") as raised:
        await bus.publish([event], [(execution_id, messages.Begin())])
    rest = raised.value
    assert (list(rest.events), list(rest.triggers), list(rest.tasks)) == (
        [],
        [(execution_id, messages.Begin())],
        [],
    )
    await redis.delete(bus.triggers_stream(partition))
    await bus.publish(rest.events, rest.triggers, rest.tasks)
    assert await redis.xlen(bus.events_stream(partition)) == 1
    assert await redis.xlen(bus.triggers_stream(partition)) == 1


async def test_a_publish_sent_again_with_its_token_adds_nothing(
    bus: Bus, redis: aioredis.Redis
) -> None:
    """What the client does after a reply lost with its connection (it sends the command
    again) and what the relay does after a failed publish (the same batch again): each
    stream's part is added once per publish token, on a single Redis as on a cluster."""
    execution_id = uuid4()
    partition = bus.partition_of(execution_id)
    batch = ([stored(execution_id, 1), stored(execution_id, 2)], [(execution_id, messages.Begin())])
    for _ in range(3):
        await bus.publish(*batch, token="batch-1")
    assert await redis.xlen(bus.events_stream(partition)) == 2
    assert await redis.xlen(bus.triggers_stream(partition)) == 1
    await bus.publish(*batch, token="batch-2")  # another publish is added
    await bus.publish(*batch)  # and so is one with a token of its own
    assert await redis.xlen(bus.events_stream(partition)) == 2 * 3
    # The token is kept per stream and publisher, expiring.
    keys = [k async for k in redis.scan_iter(match=f"*{bus.events_stream(partition)}:published:*")]
    assert len(keys) == 1
    assert 0 < await redis.pttl(keys[0]) <= PUBLISH_TOKEN_TTL_MS


async def test_a_publish_after_redis_lost_its_scripts_loads_them_again(
    bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = uuid4()
    partition = bus.partition_of(execution_id)
    await bus.publish([stored(execution_id, 1)], [(execution_id, messages.Begin())])
    await redis.script_flush()  # as a restart without persistence does
    await bus.publish([stored(execution_id, 2)], [(execution_id, messages.Begin())])
    assert await redis.xlen(bus.events_stream(partition)) == 2
    assert await redis.xlen(bus.triggers_stream(partition)) == 2


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


async def test_a_report_adds_the_result_then_acknowledges_the_task(
    bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = uuid4()
    tasks = bus.tasks_stream("default")
    triggers = bus.triggers_stream(bus.partition_of(execution_id))
    await bus.ensure_group(tasks, messages.WORKER_GROUP)
    await bus.ensure_group(triggers, "engine-test")
    await bus.add_task(task(execution_id, 2))
    await bus.add_task(task(execution_id, 3))
    first, second = await bus.read_tasks(messages.WORKER_GROUP, "w", [tasks], count=10)
    assert isinstance(first, TaskDelivery) and isinstance(second, TaskDelivery)
    result = messages.TaskResult(task_id=first.message.task_id, ok=True, output={"x": 1})

    added = await bus.report(execution_id, result, tasks, messages.WORKER_GROUP, first.entry.id)
    (delivered,) = await bus.read_triggers("engine-test", "e", [triggers], count=10)
    assert isinstance(delivered, TriggerDelivery) and delivered.entry.id == added
    assert (delivered.execution_id, delivered.message) == (execution_id, result)
    # Only the reported task's entry was acknowledged.
    pending = await redis.xpending_range(tasks, messages.WORKER_GROUP, "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [second.entry.id]


async def test_reports_asked_together_share_one_script_run_and_fail_alone(
    bus: Bus, redis: aioredis.Redis
) -> None:
    """On a single Redis the reports asked for in one turn of the loop are one EVALSHA;
    each gets its own trigger entry, or its own error (a task group that is gone)."""
    tasks = bus.tasks_stream("default")
    await bus.ensure_group(tasks, messages.WORKER_GROUP)
    ids = [uuid4() for _ in range(12)]
    for stream in bus.triggers_streams():
        await bus.ensure_group(stream, "engine-test")
    for n, execution_id in enumerate(ids):
        await bus.add_task(task(execution_id, n + 2))
    deliveries = await bus.read_tasks(messages.WORKER_GROUP, "w", [tasks], count=100)
    assert len(deliveries) == len(ids)
    results = [
        messages.TaskResult(task_id=d.message.task_id, ok=True, output={"n": n})
        for n, d in enumerate(deliveries)
        if isinstance(d, TaskDelivery)
    ]
    # In the slot of the streams of ids[0]'s partition (a cluster refuses a script's
    # keys of several slots; there, each report is two commands of its own).
    not_a_stream = bus.triggers_stream(bus.partition_of(ids[0])) + ":not-a-stream"
    await redis.set(not_a_stream, "x")
    single = not isinstance(bus.redis, RedisCluster)
    if single:
        runs = (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"]
    outcomes = await asyncio.gather(
        *(
            bus.report(d.message.execution_id, r, tasks, messages.WORKER_GROUP, d.entry.id)
            for d, r in zip(deliveries, results, strict=True)
            if isinstance(d, TaskDelivery)
        ),
        # Its task "stream" is not one (a key of another type): its XACK is refused.
        bus.report(ids[0], results[0], not_a_stream, messages.WORKER_GROUP, "1-1"),
        return_exceptions=True,
    )
    if single:
        assert (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"] - runs == 1
    *added, refused = outcomes
    assert isinstance(refused, BusError) and "WRONGTYPE" in str(refused)
    assert all(isinstance(a, str) for a in added)
    got = await bus.read_triggers("engine-test", "e", bus.triggers_streams(), count=100)
    by_entry = {(g.entry.stream, g.entry.id): g for g in got if isinstance(g, TriggerDelivery)}
    # The refused report added its result (the XACK came after): as a retried report may.
    assert len(by_entry) == len(ids) + 1
    for entry_id, d, r in zip(added, deliveries, results, strict=True):
        assert isinstance(d, TaskDelivery)
        stream = bus.triggers_stream(bus.partition_of(d.message.execution_id))
        trigger = by_entry[(stream, str(entry_id))]
        assert (trigger.execution_id, trigger.message) == (d.message.execution_id, r)
    assert await redis.xpending(tasks, messages.WORKER_GROUP) == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }  # fmt: skip


async def test_read_group_blocks_then_returns_nothing(bus: Bus) -> None:
    stream = bus.triggers_stream(1)
    await bus.ensure_group(stream, "g")
    assert await bus.read_group("g", "c", [stream], block_ms=20) == []


def test_the_keys_of_one_command_share_a_slot_and_partitions_spread() -> None:
    """What Redis Cluster needs: a partition's streams and dead letters, a queue's tasks
    and leases, a namespace's rate buckets each in one slot; partitions over many."""
    keys = Keys("steplog")
    for p in range(16):
        slots = {key_slot(k.encode()) for k in (keys.events(p), keys.triggers(p))}
        slots |= {key_slot(Keys.dead_letters(keys.triggers(p)).encode())}
        assert len(slots) == 1
    assert len({key_slot(keys.triggers(p).encode()) for p in range(16)}) == 16
    queue = "activity:ns:name"
    assert key_slot(keys.tasks(queue).encode()) == key_slot(keys.leases(queue).encode())
    buckets = [keys.rate_bucket("n{s}", "starts"), keys.rate_bucket("n{s}", "starts", "k{1}")]
    assert len({key_slot(b.encode()) for b in buckets}) == 1


async def test_read_group_over_every_partition_reads_them_all(bus: Bus) -> None:
    """One call over all partitions' streams (on a cluster: one XREADGROUP per slot)."""
    streams = bus.triggers_streams()
    for stream in streams:
        await bus.ensure_group(stream, "engine")
    ids = [uuid4() for _ in range(40)]
    await bus.publish(triggers=[(i, messages.Begin()) for i in ids])
    assert len({bus.partition_of(i) for i in ids}) == bus.partitions
    got = await bus.read_triggers("engine", "e", streams, count=100)
    assert sorted(str(d.execution_id) for d in got if isinstance(d, TriggerDelivery)) == sorted(
        str(i) for i in ids
    )
    again = await bus.read_triggers("engine", "e", dict.fromkeys(streams, "0"), count=100)
    assert len(again) == len(ids)  # pending for "e", in every partition
    assert await bus.read_triggers("engine", "e", streams, count=100, block_ms=20) == []


async def test_a_blocking_read_over_every_partition_wakes_on_any(
    bus: Bus, eventually: Eventually
) -> None:
    streams = bus.events_streams()
    for stream in streams:
        await bus.ensure_group(stream, "g")
    execution_id = uuid4()
    reader = asyncio.ensure_future(bus.read_group("g", "c", streams, count=10, block_ms=30_000))
    slots = bus.partitions if isinstance(bus.redis, RedisCluster) else 1

    async def blocked() -> bool:
        return await _blocked_reads(bus) >= slots

    await eventually(blocked)
    await bus.publish_events([stored(execution_id, 1)])
    (entry,) = await reader
    assert entry.stream == bus.events_stream(bus.partition_of(execution_id))
    assert entry.fields["seq"] == b"1"
    # The reads of the other slots were dropped; the next read gets what comes next.
    await bus.publish_events([stored(execution_id, 2)])
    (entry,) = await bus.read_group("g", "c", streams, count=10, block_ms=5_000)
    assert entry.fields["seq"] == b"2"


async def test_a_blocking_read_woken_by_every_partition_at_once_drops_nothing(
    bus: Bus, eventually: Eventually
) -> None:
    """Every entry Redis hands to the consumer is returned by some read: none is left
    pending unseen (on a cluster, the reads of the other slots are woken, not dropped)."""
    streams = bus.triggers_streams()
    for stream in streams:
        await bus.ensure_group(stream, "engine")
    slots = bus.partitions if isinstance(bus.redis, RedisCluster) else 1
    seen: list[tuple[str, str]] = []
    for _ in range(5):
        reader = asyncio.ensure_future(
            bus.read_group("engine", "e", streams, count=100, block_ms=30_000)
        )

        async def blocked() -> bool:
            return await _blocked_reads(bus) >= slots

        await eventually(blocked)
        await bus.publish(triggers=[(uuid4(), messages.Begin()) for _ in range(40)])
        seen += [(e.stream, e.id) for e in await reader]
        while more := await bus.read_group("engine", "e", streams, count=100):
            seen += [(e.stream, e.id) for e in more]
    assert len(seen) == len(set(seen)) == 200
    pending = [(await bus.redis.xpending(s, "engine"))["pending"] for s in streams]
    assert sum(pending) == 200


async def _blocked_reads(bus: Bus) -> int:
    """How many XREADGROUP calls are blocked now (on every node of a cluster)."""
    if isinstance(bus.redis, RedisCluster):
        replies = await bus.redis.client_list(target_nodes=RedisCluster.ALL_NODES)
        clients = [c for reply in replies.values() for c in reply]
    else:
        clients = await bus.redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


async def test_triggers_and_tasks_go_to_their_streams(bus: Bus) -> None:
    execution_id = uuid4()
    triggers = bus.triggers_stream(bus.partition_of(execution_id))
    await bus.ensure_group(triggers, "engine")
    await bus.ensure_group(bus.tasks_stream("q1"), "workers")
    await bus.publish(
        triggers=[(execution_id, messages.Begin())],
        tasks=[task(execution_id, 2, "q1")],
    )
    entry_id = await bus.add_trigger(execution_id, messages.TimerFired(timer_id="t"))
    await bus.add_task(task(execution_id, 5, "q1"))

    got = await bus.read_triggers("engine", "e1", [triggers])
    assert all(isinstance(d, TriggerDelivery) for d in got)
    assert [(d.execution_id, d.message) for d in got if isinstance(d, TriggerDelivery)] == [
        (execution_id, messages.Begin()),
        (execution_id, messages.TimerFired(timer_id="t")),
    ]
    assert got[1].entry.id == entry_id and got[1].entry.stream == triggers
    tasks = await bus.read_tasks("workers", "w1", [bus.tasks_stream("q1")])
    assert tasks == [
        TaskDelivery(entry=d.entry, message=task(execution_id, seq, "q1"))
        for d, seq in zip(tasks, (2, 5), strict=True)
    ]


async def test_trigger_and_task_entries_have_the_documented_fields(
    bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = uuid4()
    await bus.add_trigger(execution_id, messages.Heartbeat(task_id="t1"))
    await bus.add_task(task(execution_id, 2))
    [(_, trigger)] = await redis.xrange(bus.triggers_stream(bus.partition_of(execution_id)))
    assert trigger == {
        b"v": b"2",
        b"execution_id": str(execution_id).encode(),
        b"message": b'{"kind":"heartbeat","task_id":"t1"}',
    }
    [(_, fields)] = await redis.xrange(bus.tasks_stream("default"))
    assert fields.keys() == {b"v", b"message"} and fields[b"v"] == b"2"
    assert messages.decode_task(fields[b"message"]) == task(execution_id, 2)


async def test_entries_that_carry_no_message_are_malformed(bus: Bus, redis: aioredis.Redis) -> None:
    stream = bus.triggers_stream(0)
    await bus.ensure_group(stream, "engine")
    good_id = str(uuid4())
    bad = [
        {"v": "2", "message": b'{"kind":"begin"}'},  # no execution id
        {"v": "2", "execution_id": "not-a-uuid", "message": b'{"kind":"begin"}'},
        {"v": "2", "execution_id": good_id, "message": b"{not json"},
        {"v": "2", "execution_id": good_id, "message": b'{"kind":"nope"}'},
        {"v": "2", "execution_id": good_id, "message": messages.encode(task(uuid4(), 1))},
        {"v": "9", "execution_id": good_id, "message": b'{"kind":"begin"}'},
        {"v": "1", "execution_id": good_id, "kind": "stop", "body": b"{}"},
    ]
    for fields in bad:
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
    got = await bus.read_triggers("engine", "e", [stream])
    assert len(got) == len(bad) and all(isinstance(d, Malformed) for d in got)
    assert all(isinstance(d, Malformed) and d.reason for d in got)

    # A field name that is not UTF-8: malformed too, not an error of the read (which would
    # fail every later read and claim of the same pending entry).
    await redis.xadd(stream, {b"\xff": b"x", "v": "2", "message": b'{"kind":"begin"}'})
    (odd,) = await bus.read_triggers("engine", "e", [stream])
    assert isinstance(odd, Malformed) and odd.reason
    claimed = await bus.claim_triggers(stream, "engine", "e2", min_idle_ms=0)
    assert odd.entry.id in [c.entry.id for c in claimed]  # (with the others still pending)
    assert all(isinstance(c, Malformed) for c in claimed)

    tasks = bus.tasks_stream("default")
    await bus.ensure_group(tasks, "workers")
    await redis.xadd(
        tasks, {b"\xfe\xff": b"y", "v": "2", "message": messages.encode(task(uuid4(), 1))}
    )
    await redis.xadd(tasks, {"v": "2", "message": b'{"kind":"begin"}'})
    await redis.xadd(tasks, {"v": "1", "execution_id": good_id, "seq": 3, "data": b"{}"})
    [odd_task, a, b] = await bus.read_tasks("workers", "w", [tasks])
    assert isinstance(a, Malformed) and isinstance(b, Malformed)
    # (an unknown field, whatever its name, is ignored: the task is read)
    assert not isinstance(odd_task, Malformed) and odd_task.message.state == "Work"
    await bus.dead_letter(a.entry, "workers", "malformed")
    assert (await redis.xpending(tasks, "workers"))["pending"] == 2  # odd_task and b


def test_entries_of_version_1_are_read_as_messages() -> None:
    """Written before engine.messages: read during an upgrade, not dead-lettered."""
    execution_id = uuid4()

    def entry(**fields: bytes) -> StreamEntry:
        return StreamEntry("s", "1-0", {"v": b"1", **fields})

    eid = str(execution_id).encode()
    begin = read_trigger(entry(kind=b"begin", execution_id=eid, body=b'{"now":"x"}'))
    assert begin == TriggerDelivery(begin.entry, execution_id, messages.Begin())
    result = read_trigger(
        entry(kind=b"task_result", execution_id=eid, body=b'{"task_id":"t","ok":true,"output":1}')
    )
    assert isinstance(result, TriggerDelivery)
    assert result.message == messages.TaskResult(task_id="t", ok=True, output=1)
    timer = read_trigger(entry(kind=b"timer", execution_id=eid, body=b'{"timer_id":"w"}'))
    assert isinstance(timer, TriggerDelivery)
    assert timer.message == messages.TimerFired(timer_id="w")
    scheduled = ev.TaskScheduled(name="Work", task_id="t", resource="r", input=[1], attempt=2)
    old_task = read_task(entry(execution_id=eid, seq=b"4", data=ev.encode_event(scheduled)))
    assert isinstance(old_task, TaskDelivery)
    assert old_task.message == messages.TaskMessage(
        execution_id=execution_id,
        seq=4,
        task_id="t",
        state="Work",
        attempt=2,
        resource="r",
        input=[1],
    )


async def test_autoclaim_redelivers_with_delivery_counts_and_dead_letters(
    bus: Bus, redis: aioredis.Redis
) -> None:
    stream = bus.tasks_stream("default")
    execution_id = uuid4()
    await bus.ensure_group(stream, "workers")
    await bus.add_task(task(execution_id, 1))
    await bus.add_task(task(execution_id, 2))
    (a, b) = await bus.read_group("workers", "dead-worker", [stream])

    claimed = await bus.autoclaim(stream, "workers", "w2", min_idle_ms=0)
    assert [(e.id, e.deliveries) for e in claimed] == [(a.id, 2), (b.id, 2)]
    tasks = await bus.claim_tasks(stream, "workers", "w3", min_idle_ms=0, count=1)
    assert [(d.entry.id, d.entry.deliveries) for d in tasks] == [(a.id, 3)]
    assert isinstance(tasks[0], TaskDelivery) and tasks[0].message == task(execution_id, 1)
    assert await bus.autoclaim(stream, "workers", "w4", min_idle_ms=60_000) == []
    assert await bus.delivery_counts(stream, "workers", [a.id, b.id]) == {a.id: 3, b.id: 2}

    dead_id = await bus.dead_letter(tasks[0].entry, "workers", "too many deliveries")
    dead = await redis.xrange(Keys.dead_letters(stream))
    assert [
        (
            i.decode(),
            messages.decode_task(f[b"message"]).seq,
            f[b"dead_reason"],
            f[b"dead_deliveries"],
        )
        for i, f in dead
    ] == [(dead_id, 1, b"too many deliveries", b"3")]
    assert await bus.delivery_counts(stream, "workers", [a.id, b.id]) == {b.id: 2}


async def test_the_doorbell_rings_on_a_new_entry_and_leaves_nothing_to_read(
    bus: Bus, redis: aioredis.Redis, eventually: Eventually
) -> None:
    """wait_for_entries: blocks until an entry comes (any partition), then the group is
    past every entry added so far, with nothing pending; a later entry rings again."""
    streams = bus.events_streams()
    for stream in streams:
        await bus.ensure_group(stream, "g", start_id="$")
    assert await bus.wait_for_entries("g", "c", streams, block_ms=20) is False
    ids = [uuid4() for _ in range(12)]
    await bus.publish_events([stored(i, seq) for i in ids for seq in (1, 2, 3)])
    assert len({bus.partition_of(i) for i in ids}) > 1
    assert await bus.wait_for_entries("g", "c", streams, block_ms=5_000) is True
    for stream in streams:
        assert (await redis.xpending(stream, "g"))["pending"] == 0
    # Skipped, not delivered later: the reader reads what they announced elsewhere.
    assert await bus.read_group("g", "other", streams, count=100) == []
    assert await bus.wait_for_entries("g", "c", streams, block_ms=20) is False
    ringing = asyncio.ensure_future(bus.wait_for_entries("g", "c", streams, block_ms=30_000))
    slots = bus.partitions if isinstance(bus.redis, RedisCluster) else 1

    async def blocked() -> bool:
        return await _blocked_reads(bus) >= slots

    await eventually(blocked)
    await bus.publish_events([stored(ids[0], 4)])
    assert await ringing is True
    assert await bus.read_group("g", "other", streams, count=100) == []


async def test_the_doorbell_of_a_missing_group_raises_missing_group(bus: Bus) -> None:
    with pytest.raises(MissingGroup):
        await bus.wait_for_entries("g", "c", bus.events_streams(), block_ms=20)


async def test_a_missing_group_raises_missing_group(bus: Bus) -> None:
    stream = bus.triggers_stream(0)
    with pytest.raises(MissingGroup) as raised:
        await bus.read_triggers("engine", "e", [stream])
    assert isinstance(raised.value.__cause__, redis_errors.ResponseError)
    await bus.ensure_group(stream, "other")
    with pytest.raises(MissingGroup):
        await bus.autoclaim(stream, "engine", "e", 0)


@pytest.fixture
async def unreachable(redis_prefix: str) -> AsyncIterator[Bus]:
    """A bus whose Redis does not answer (nothing listens on its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = aioredis.Redis(port=port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    yield Bus(client, redis_prefix)
    await client.aclose()


async def test_a_redis_that_does_not_answer_raises_unavailable(unreachable: Bus) -> None:
    with pytest.raises(Unavailable) as raised:
        await unreachable.ping()
    assert isinstance(raised.value.__cause__, redis_errors.ConnectionError)
    with pytest.raises(Unavailable):
        await unreachable.publish(triggers=[(uuid4(), messages.Begin())])
    with pytest.raises(Unavailable):
        await unreachable.read_tasks("workers", "w", [unreachable.tasks_stream("default")])
    with pytest.raises(Unavailable):
        await unreachable.ensure_group(unreachable.triggers_stream(0), "engine")


def test_translate_sorts_redis_errors_into_steplog_errors() -> None:
    outages = [
        redis_errors.ConnectionError("refused"),
        redis_errors.TimeoutError("timed out"),
        redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        redis_errors.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
        # An EXEC refused as a whole names its refusal.
        redis_errors.ExecAbortError(
            "Transaction discarded because of: OOM command not allowed when used memory"
        ),
        ConnectionResetError("reset by peer"),
        # A report's command refused inside REPORT_LUA (its redis.pcall's error).
        redis_errors.ResponseError(
            "@user_script: 16: -OOM command not allowed when used memory > 'maxmemory'."
        ),
    ]
    assert all(type(translate(exc)) is Unavailable for exc in outages)
    nogroup = "NOGROUP No such key 's' or consumer group 'g'"
    assert type(translate(redis_errors.ResponseError(nogroup))) is MissingGroup
    wrapped = f"Command # 1 (XREADGROUP GROUP g c) of pipeline caused error: {nogroup}"
    assert type(translate(redis_errors.ResponseError(wrapped))) is MissingGroup
    wrongtype = redis_errors.ResponseError("WRONGTYPE Operation against a key")
    assert type(translate(wrongtype)) is BusError
    aborted = redis_errors.ExecAbortError("Transaction discarded because of previous errors.")
    assert type(translate(aborted)) is BusError


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
