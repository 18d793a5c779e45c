"""The projection framework with the state-stats read model, against real
PostgreSQL and Redis: live projection from the stream, rebuild equals live,
status and lag, and the statistics themselves."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore, NewEvent
from engine.core import events as ev
from projections import stats
from projections.runner import (
    PROJECTIONS,
    Projector,
    SharedReads,
    catch_up,
    catch_up_all,
    projectors,
    rebuild,
)
from projections.status import projection_status
from tests.unit.test_replay import EID, WORKFLOW, run

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def record(store: EventStore, input: Any, stop_at: int | None = None) -> UUID:
    """Store a history made by decide (tests/unit/test_replay.run) under a new id,
    one append per decision (events of a decision share a timestamp)."""
    eid = uuid4()
    history = run(WORKFLOW, input, stop_at)
    started = history[0].event
    assert isinstance(started, ev.ExecutionStarted)
    await store.start_execution(
        "default",
        "wf",
        1,
        eid,
        str(eid),
        msgspec.json.encode(started.input),
        NewEvent("ExecutionStarted", ev.encode_event(started), history[0].timestamp),
    )
    seq = 1
    for stamp, group in itertools.groupby(history[1:], key=lambda r: r.timestamp):
        batch = [r.event for r in group]
        # Ids in the events name the execution they were decided for: re-key them.
        data = [ev.encode_event(e).replace(EID.encode(), str(eid).encode()) for e in batch]
        await store.append(
            eid,
            seq,
            [NewEvent(ev.event_type(e), d, stamp) for e, d in zip(batch, data, strict=True)],
        )
        seq += len(batch)
    return eid


async def table(pool: asyncpg.Pool, name: str, order: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await pool.fetch(f"SELECT * FROM {name} ORDER BY {order}")]


async def snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "visits": await table(pool, stats.VISITS, "execution_id, entered_seq"),
        "progress": await table(pool, stats.PROGRESS, "execution_id"),
        "executions": await table(pool, "executions_view", "execution_id"),
    }


async def test_state_visits_count_entries_outcomes_retries_and_durations(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    for n in (1, 2):
        await record(store, {"items": list(range(n))})
    await record(store, {"items": [1]}, stop_at=2)

    await catch_up_all(pool, store)

    got = {
        s.name: s
        for s in await stats.state_stats(pool, "default", "wf", T0, T0 + dt.timedelta(days=1))
    }
    assert got["Item"].entered == 3
    assert (got["Item"].succeeded, got["Item"].failed) == (3, 0)
    # Two completed runs: Flaky failed 3 times each (2 retries), then its Catch took it.
    assert (got["Flaky"].entered, got["Flaky"].retried, got["Flaky"].failed) == (2, 4, 2)
    assert got["Flaky"].failed_attempts == 6
    assert got["Done"].succeeded == 2
    # The stopped run was in its Parallel state: those visits were aborted.
    assert got["Both"].aborted == 1 and got["Both"].succeeded == 2
    # W waits 5 s; the driver advances 1 s per decision otherwise.
    assert got["W"].duration_ms.p50 == 5000.0
    assert got["Done"].duration_ms.p99 == 0.0
    nothing = await stats.state_stats(pool, "default", "wf", T0 - dt.timedelta(days=2), T0)
    assert nothing == []


async def test_reapplying_events_changes_nothing(pool: asyncpg.Pool, store: EventStore) -> None:
    eid = await record(store, {"items": [1, 2]})
    await catch_up_all(pool, store)
    before = await snapshot(pool)

    async with pool.acquire() as conn, conn.transaction():
        events = stats.PROJECTION.relevant(await store.load(eid))
        assert await stats.apply_events(conn, events, stats.PROJECTION.identity()) == 0

    assert await snapshot(pool) == before


async def _groups_exist(bus: Bus, group: str) -> bool:
    for stream in bus.events_streams():
        if not await bus.redis.exists(stream):
            return False
        names = {g["name"] for g in await bus.redis.xinfo_groups(stream)}
        if group not in names and group.encode() not in names:
            return False
    return True


async def test_rebuilt_projections_equal_the_live_ones(
    pool: asyncpg.Pool, store: EventStore, bus: Bus, eventually: Any
) -> None:
    # Live: every projection fed by its own group while histories are written and
    # published (the hourly catch-up cannot be what applies them).
    runners = [
        Projector(pool, store, bus, projection=p, block_ms=50, catchup_interval=3600)
        for p in PROJECTIONS.values()
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        for p in PROJECTIONS.values():
            await eventually(lambda p=p: _groups_exist(bus, p.group))
        ids = [await record(store, {"items": list(range(n))}) for n in range(3)]
        ids.append(await record(store, {"items": [1]}, stop_at=4))
        total = sum([len(await store.load(eid)) for eid in ids])
        await bus.publish_events([e for eid in ids for e in await store.load(eid)])

        async def all_applied() -> bool:
            return all(r.applied == total for r in runners)

        await eventually(all_applied, timeout_s=10)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    live = await snapshot(pool)
    assert len(live["visits"]) > 20 and len(live["executions"]) == 4
    # Damage the live tables: a rebuild must not depend on them.
    await pool.execute("UPDATE state_visits SET outcome = 'running', retries = 0")
    await pool.execute("DELETE FROM executions_view")

    for name in PROJECTIONS:
        assert await rebuild(pool, name) == total

    assert await snapshot(pool) == live
    assert await pool.fetchval("SELECT to_regclass('state_visits_new')") is None


async def test_status_reports_position_and_lag(pool: asyncpg.Pool, store: EventStore) -> None:
    eid = await record(store, {"items": []})
    count = len(await store.load(eid))
    now = dt.datetime.now(dt.UTC)

    before = {s.name: s for s in await projection_status(pool, now)}
    await catch_up(pool, store, PROJECTIONS["executions"])
    after = {s.name: s for s in await projection_status(pool, now)}

    assert set(before) == set(PROJECTIONS)
    assert before["executions"].lag_events == count and before["executions"].behind_seconds > 0
    assert (after["executions"].lag_events, after["executions"].behind_seconds) == (0, 0.0)
    assert after["executions"].position > 0 and after["executions"].updated_at is not None
    assert after["state_stats"].lag_events == count  # each projection has its own checkpoint


async def test_visits_keep_every_name_and_instant_exactly(pool: asyncpg.Pool) -> None:
    """The upserts send a batch's rows as one JSON document: names with quotes,
    backslashes, other scripts and U+FFFD (a NUL, as this model spells it), and instants
    to the microsecond, come back as they went in."""
    eid = uuid4()
    at = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC)
    odd = ['say "hi"', "back\\slash", "日本語 ✓ 🙂", "nul\ufffdhere", "", "ends\n"]
    visits = [
        stats.Visit(
            execution_id=eid,
            entered_seq=seq,
            namespace="default",
            workflow="wf",
            version=1,
            frame=name,
            state=name,
            entered_at=at,
            ended_at=None if seq % 2 else at + dt.timedelta(microseconds=seq),
            outcome="running" if seq % 2 else "succeeded",
            failed_attempts=seq,
            retries=seq + 1,
            pending_failure=bool(seq % 2),
        )
        for seq, name in enumerate(odd, start=2)
    ]
    progress = stats.Progress(
        execution_id=eid, namespace="default", workflow='w"f', version=3, last_seq=7
    )
    async with pool.acquire() as conn:
        await conn.execute(stats._upsert_visit(stats.VISITS), stats._rows(visits))
        await conn.execute(stats._upsert_progress(stats.PROGRESS), stats._rows([progress]))
    got = [
        stats._visit(r)
        for r in await pool.fetch(
            f"SELECT {stats._VISIT_COLUMNS} FROM {stats.VISITS} WHERE execution_id = $1"
            " ORDER BY entered_seq",
            eid,
        )
    ]
    assert got == visits
    (row,) = await pool.fetch(
        f"SELECT execution_id, namespace, workflow, version, last_seq FROM {stats.PROGRESS}"
        " WHERE execution_id = $1",
        eid,
    )
    assert stats.Progress(**dict(row.items())) == progress


async def test_two_projectors_of_each_projection_apply_every_event_once(
    pool: asyncpg.Pool, store: EventStore, bus: Bus, eventually: Any
) -> None:
    """As two processes run them: both follow the streams and each starts from the
    checkpoint it last wrote, often stale as the other moves it; every event is still
    applied once (the read models equal a catch-up from nothing)."""
    runners = [
        Projector(pool, store, bus, projection=p, consumer=c, block_ms=50, catchup_interval=3600)
        for p in PROJECTIONS.values()
        for c in ("one", "two")
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        for p in PROJECTIONS.values():
            await eventually(lambda p=p: _groups_exist(bus, p.group))
        ids = []
        for n in range(12):  # published one by one: many small catch-ups, interleaved
            ids.append(await record(store, {"items": list(range(n % 4))}))
            await bus.publish_events(await store.load(ids[-1]))
        total = sum([len(await store.load(eid)) for eid in ids])

        async def all_applied() -> bool:
            by_projection = [
                sum(r.applied for r in runners if r.projection is p) for p in PROJECTIONS.values()
            ]
            return by_projection == [total] * len(PROJECTIONS)

        await eventually(all_applied, timeout_s=10)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    live = await snapshot(pool)
    assert len(live["executions"]) == 12
    for name in PROJECTIONS:
        assert await rebuild(pool, name) == total
    assert await snapshot(pool) == live


async def test_projectors_at_one_checkpoint_read_each_batch_once_between_them(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    """Caught up alike, a process's projectors ask for the same events: one read, and
    each projection applies all of it (its read model equals a catch-up of its own)."""
    shared = SharedReads(store)
    for round_ in range(3):
        ids = [await record(store, {"items": list(range(n % 4))}) for n in range(5)]
        events = sum([len(await store.load(eid)) for eid in ids])
        asked, reads = shared.asked, shared.reads
        applied = await asyncio.gather(
            *(catch_up(pool, shared, p, batch_size=1000) for p in PROJECTIONS.values())
        )
        assert applied == [events] * len(PROJECTIONS), round_
        # Each asked for the batch, then for what follows it (nothing yet): the batch
        # was read once (an empty read is given again only to a projector asking while
        # it is under way).
        assert shared.asked - asked == 2 * len(PROJECTIONS)
        assert 2 <= shared.reads - reads <= 1 + len(PROJECTIONS), round_
    live = await snapshot(pool)
    for name in PROJECTIONS:
        await rebuild(pool, name)
    assert await snapshot(pool) == live


async def test_the_projectors_of_one_process_share_their_reads_and_miss_nothing(
    pool: asyncpg.Pool, store: EventStore, bus: Bus, eventually: Any
) -> None:
    """`projectors()` gives a process's projectors one `SharedReads`: following the same
    doorbells they read each batch of the log once between them, and the read models
    still equal a catch-up from nothing."""
    runners = projectors(pool, store, bus)
    shared = runners[0].store
    assert isinstance(shared, SharedReads) and all(r.store is shared for r in runners)
    for r in runners:
        r.block_ms, r.catchup_interval = 50, 3600
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        for p in PROJECTIONS.values():
            await eventually(lambda p=p: _groups_exist(bus, p.group))
        reads_before, asked_before = shared.reads, shared.asked
        ids = []
        for n in range(12):
            ids.append(await record(store, {"items": list(range(n % 4))}))
            await bus.publish_events(await store.load(ids[-1]))
        total = sum([len(await store.load(eid)) for eid in ids])

        async def all_applied() -> bool:
            return [r.applied for r in runners] == [total] * len(runners)

        await eventually(all_applied, timeout_s=10)
        reads, asked = shared.reads - reads_before, shared.asked - asked_before
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    # Following the same doorbells, the projectors often asked for the same batch.
    assert reads < asked, (reads, asked)
    live = await snapshot(pool)
    assert len(live["executions"]) == 12
    for name in PROJECTIONS:
        assert await rebuild(pool, name) == total
    assert await snapshot(pool) == live
