"""The executions read model and its projector, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore, NewEvent
from engine.core import events as ev
from projections import executions as view
from projections.runner import GROUP, Projector, catch_up, get_checkpoint, rebuild

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)


def _new(event: ev.Event, at: dt.datetime) -> NewEvent:
    return NewEvent(ev.event_type(event), ev.encode_event(event), at)


async def start(store: EventStore, *, workflow: str = "wf", input: Any = None, at=T0) -> UUID:
    eid = uuid4()
    payload = {"n": 1} if input is None else input
    started = ev.ExecutionStarted(input=payload, workflow=workflow, version=2, name=f"n-{eid}")
    await store.start_execution(
        "default", workflow, 2, eid, f"n-{eid}", msgspec.json.encode(payload), _new(started, at)
    )
    return eid


async def append(store: EventStore, eid: UUID, after: int, *events: ev.Event, at=T0) -> None:
    await store.append(eid, after, [_new(e, at + dt.timedelta(seconds=1)) for e in events])


async def rows(pool: asyncpg.Pool, table: str = view.TABLE) -> dict[UUID, view.ExecutionRow]:
    records = await pool.fetch(view.select_sql(table))
    return {r[0]: view.row_from_record(r) for r in records}


_sorted = msgspec.json.Encoder(order="sorted")


def _canon(text: str | None) -> str | None:
    return None if text is None else _sorted.encode(msgspec.json.decode(text)).decode()


def norm(row: view.ExecutionRow | None) -> view.ExecutionRow:
    """The row with canonical JSON text (jsonb renders spacing and key order its own way)."""
    assert row is not None
    return msgspec.structs.replace(row, input=_canon(row.input) or "", output=_canon(row.output))


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def three_executions(store: EventStore) -> tuple[UUID, UUID, UUID]:
    """One succeeded (3 events), one failed (2), one still running (2)."""
    ok = await start(store, input={"order": 7})
    await append(store, ok, 1, ev.PassStateEntered(name="A", input={"order": 7}))
    await append(store, ok, 2, ev.ExecutionSucceeded(output={"total": 42}))
    bad = await start(store, workflow="other")
    await append(store, bad, 1, ev.ExecutionFailed(error="Oops", cause="it broke"))
    running = await start(store, input=[1, "two"])
    await append(store, running, 1, ev.TaskStateEntered(name="T"))
    return ok, bad, running


async def test_catch_up_builds_rows_from_the_log(pool: asyncpg.Pool, store: EventStore) -> None:
    ok, bad, running = await three_executions(store)

    assert await catch_up(pool, store) == 7

    got = await rows(pool)
    assert got[ok].status == "SUCCEEDED"
    assert msgspec.json.decode(got[ok].output or "") == {"total": 42}
    assert msgspec.json.decode(got[ok].input) == {"order": 7}
    assert got[ok].stopped_at == T0 + dt.timedelta(seconds=1)
    assert got[ok].started_at == T0
    assert (got[ok].workflow, got[ok].version, got[ok].name) == ("wf", 2, f"n-{ok}")
    assert got[ok].last_seq == 3
    assert (got[bad].status, got[bad].error, got[bad].cause) == ("FAILED", "Oops", "it broke")
    assert got[bad].output is None
    assert got[running].status == "RUNNING"
    assert got[running].stopped_at is None
    assert msgspec.json.decode(got[running].input) == [1, "two"]
    assert got[running].last_seq == 2
    last = (await store.load(running))[-1]
    assert await get_checkpoint(pool, "executions") == last.global_position


async def test_timed_out_and_aborted_rows(pool: asyncpg.Pool, store: EventStore) -> None:
    timed_out = await start(store)
    await append(store, timed_out, 1, ev.ExecutionTimedOut())
    aborted = await start(store)
    await append(store, aborted, 1, ev.ExecutionAborted(error="Stop", cause="user"))
    # A terminal row absorbs anything recorded after the end.
    await append(store, aborted, 2, ev.TaskResultIgnored(task_id="t1", reason="ended"))

    await catch_up(pool, store)

    got = await rows(pool)
    assert (got[timed_out].status, got[timed_out].error) == ("TIMED_OUT", "States.Timeout")
    assert (got[aborted].status, got[aborted].error, got[aborted].cause) == (
        "ABORTED",
        "Stop",
        "user",
    )
    assert got[aborted].last_seq == 3


async def test_reapplying_events_changes_nothing(pool: asyncpg.Pool, store: EventStore) -> None:
    ok, bad, running = await three_executions(store)
    await catch_up(pool, store)
    before = await rows(pool)
    events = [e for eid in (ok, bad, running) for e in await store.load(eid)]

    async with pool.acquire() as conn, conn.transaction():
        result = await view.apply_events(conn, events)

    assert (result.applied, result.duplicates, result.gaps) == (0, 7, 0)
    assert await rows(pool) == before


async def test_a_gap_is_filled_from_the_store(pool: asyncpg.Pool, store: EventStore) -> None:
    ok, _, _ = await three_executions(store)
    first, _, third = await store.load(ok)

    async def load_missing(eid: UUID, after: int, upto: int) -> list[Any]:
        return await store.load(eid, after_seq=after, upto_seq=upto)

    async with pool.acquire() as conn, conn.transaction():
        assert (await view.apply_events(conn, [first])).applied == 1
        without = await view.apply_events(conn, [third])
        with_loader = await view.apply_events(conn, [third], load_missing=load_missing)

    assert (without.applied, without.gaps) == (0, 1)
    assert (with_loader.applied, with_loader.repaired) == (1, 1)
    row = (await rows(pool))[ok]
    assert (row.status, row.last_seq) == ("SUCCEEDED", 3)


async def test_fold_equals_the_projected_row(pool: asyncpg.Pool, store: EventStore) -> None:
    ids = await three_executions(store)
    await catch_up(pool, store)
    got = await rows(pool)
    for eid in ids:
        assert norm(view.fold(await store.load(eid))) == norm(got[eid])


async def test_listing_pages_by_started_at_then_id(pool: asyncpg.Pool, store: EventStore) -> None:
    # Two share a start time: the id breaks the tie.
    times = [T0, T0 + dt.timedelta(seconds=5), T0 + dt.timedelta(seconds=5), T0 - dt.timedelta(1)]
    ids = [await start(store, at=t) for t in times]
    await catch_up(pool, store)
    expected = sorted(zip(times, ids, strict=True), key=lambda p: (-p[0].timestamp(), p[1]))

    seen: list[UUID] = []
    after = None
    while True:
        page = await view.list_rows(
            pool, namespace="default", workflow="wf", status=None, limit=1, after=after
        )
        seen += [r.execution_id for r in page.rows]
        if not page.more:
            break
        after = (page.rows[-1].started_at, page.rows[-1].execution_id)

    assert seen == [eid for _, eid in expected]


async def _applied(projector: Projector, count: int) -> bool:
    return projector.applied == count


async def _live(pool: asyncpg.Pool, store: EventStore, bus: Bus, **kw: Any) -> Projector:
    return Projector(pool, store, bus, block_ms=100, **kw)


@pytest.mark.redis_cluster
async def test_projector_follows_the_stream(
    pool: asyncpg.Pool, store: EventStore, bus: Bus
) -> None:
    projector = await _live(pool, store, bus, catchup_interval=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await eventually(lambda: _group_exists(bus))
        eid = await start(store)
        await append(store, eid, 1, ev.ExecutionSucceeded(output="done"))
        # Publish as the relay would; the hourly catch-up cannot be what applies them.
        await bus.publish_events(await store.load(eid))

        async def succeeded() -> bool:
            row = await view.get_row(pool, eid)
            return row is not None and row.status == "SUCCEEDED"

        await eventually(succeeded)
        # (The row is visible once the catch-up commits, a moment before the projector
        # counts what it applied.)
        await eventually(lambda: _applied(projector, 2))
        await eventually(lambda: _nothing_pending(bus))
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def _group_exists(bus: Bus) -> bool:
    for stream in bus.events_streams():
        if not await bus.redis.exists(stream):
            return False
        groups = await bus.redis.xinfo_groups(stream)
        if not any(g["name"] in (GROUP, GROUP.encode()) for g in groups):
            return False
    return True


async def _nothing_pending(bus: Bus) -> bool:
    for stream in bus.events_streams():
        info = await bus.redis.xpending(stream, GROUP)
        if info["pending"]:
            return False
    return True


@pytest.mark.redis_cluster
async def test_redis_flush_loses_nothing(pool: asyncpg.Pool, store: EventStore, bus: Bus) -> None:
    projector = await _live(pool, store, bus, catchup_interval=0.2, retry_delay=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await eventually(lambda: _group_exists(bus))
        # The streams (and the group) vanish; these events never reach Redis at all.
        await bus.redis.delete(*bus.events_streams())
        eid = await start(store)
        await append(store, eid, 1, ev.ExecutionFailed(error="E", cause="C"))

        async def failed() -> bool:
            row = await view.get_row(pool, eid)
            return row is not None and row.status == "FAILED"

        await eventually(failed)
        await eventually(lambda: _group_exists(bus))
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_rebuild_equals_live(pool: asyncpg.Pool, store: EventStore) -> None:
    await three_executions(store)
    await catch_up(pool, store)
    live = await rows(pool)
    indexes = await _index_names(pool)
    checkpoint = await get_checkpoint(pool, "executions")
    # An operator's storage parameters, which a rebuild keeps.
    await pool.execute(
        "ALTER TABLE executions_view SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.05)"
    )
    # Damage the live table: rebuild must not depend on it.
    await pool.execute("UPDATE executions_view SET status = 'RUNNING', last_seq = 1")

    assert await rebuild(pool, "executions") == 7

    assert await rows(pool) == live
    assert await _index_names(pool) == indexes
    assert await get_checkpoint(pool, "executions") == checkpoint
    assert await pool.fetchval("SELECT to_regclass('executions_view_new')") is None
    options = "SELECT reloptions FROM pg_class WHERE oid = 'executions_view'::regclass"
    assert await pool.fetchval(options) == [
        "fillfactor=70",
        "autovacuum_vacuum_scale_factor=0.05",
    ]


async def test_rebuild_while_events_arrive(pool: asyncpg.Pool, store: EventStore) -> None:
    await three_executions(store)
    await catch_up(pool, store)
    more = [await start(store) for _ in range(3)]
    # Some of the new events are projected live, some only after the rebuild.
    await rebuild(pool, "executions")
    for eid in more:
        await append(store, eid, 1, ev.ExecutionSucceeded(output=1))
    await catch_up(pool, store)

    got = await rows(pool)
    assert len(got) == 6
    assert all(got[eid].status == "SUCCEEDED" for eid in more)
    for eid, row in got.items():
        assert norm(view.fold(await store.load(eid))) == norm(row)


async def _index_names(pool: asyncpg.Pool) -> list[str]:
    records = await pool.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'executions_view' ORDER BY 1"
    )
    return [r[0] for r in records]


@pytest.mark.redis_cluster
async def test_a_malformed_entry_is_skipped_not_fatal(
    pool: asyncpg.Pool, store: EventStore, bus: Bus
) -> None:
    projector = Projector(pool, store, bus, block_ms=100, catchup_interval=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await eventually(lambda: _group_exists(bus))
        stream = bus.events_streams()[0]
        await bus.redis.xadd(stream, {"v": "1", "garbage": "yes"})
        eid = await start(store)
        await bus.publish_events(await store.load(eid))

        async def projected() -> bool:
            return await view.get_row(pool, eid) is not None

        await eventually(projected)
        await eventually(lambda: _nothing_pending(bus))
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_rebuild_under_a_running_projector(
    pool: asyncpg.Pool, store: EventStore, bus: Bus
) -> None:
    projector = Projector(pool, store, bus, block_ms=50, catchup_interval=0.2, retry_delay=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    ids: list[UUID] = []

    async def produce() -> None:
        for _ in range(30):
            eid = await start(store)
            await append(store, eid, 1, ev.ExecutionSucceeded(output=len(ids)))
            await bus.publish_events(await store.load(eid))
            ids.append(eid)

    try:
        await eventually(lambda: _group_exists(bus))
        producing = asyncio.create_task(produce())
        await asyncio.sleep(0)  # let the producer begin before the rebuild
        await rebuild(pool, "executions")
        await producing

        async def all_done() -> bool:
            got = await rows(pool)
            return len(got) == len(ids) and all(r.status == "SUCCEEDED" for r in got.values())

        await eventually(all_done)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    for eid, row in (await rows(pool)).items():
        assert norm(view.fold(await store.load(eid))) == norm(row)
