"""Durable time is PostgreSQL's clock (DESIGN invariant 8): the DbClock follows PostgreSQL's
clock whatever this process's wall clock says, and reports the offset; timers are claimed
by PostgreSQL's clock; a decision is never stamped before the event it follows, nor a
fired timer's consequence before its due time."""

from __future__ import annotations

import datetime as dt
import logging
import time
from uuid import UUID, uuid4

import asyncpg
import pytest
import redis.asyncio as aioredis

from engine import messages
from engine.adapters.bus import Bus
from engine.adapters.clock import DbClock
from engine.adapters.store import EventStore, NewEvent, TimerSpec
from engine.core.state import ExecutionState, TimerInfo
from engine.core.timestamps import iso_millis
from engine.core.triggers import Begin, TimerFired
from engine.loops import metrics
from engine.loops.clock import ClockWatch
from engine.loops.timers import TimerService
from engine.service import EngineService, no_earlier

SKEW_S = 45.0
T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


async def start(store: EventStore) -> UUID:
    started = NewEvent("ExecutionStarted", b'{"type":"ExecutionStarted"}', T0)
    record, _ = await store.start_execution(
        "default", "wf", 1, uuid4(), str(uuid4()), b"{}", started
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


async def db_now(pool: asyncpg.Pool) -> dt.datetime:
    value: dt.datetime = await pool.fetchval("SELECT clock_timestamp()")
    return value


async def test_now_is_postgres_time_whatever_the_wall_clock_says(pool: asyncpg.Pool) -> None:
    for skew in (0.0, SKEW_S, -SKEW_S):
        clock = DbClock(pool, wall=lambda skew=skew: time.time() + skew)  # type: ignore[misc]
        offset = await clock.sample()
        assert abs(offset + skew) < 0.5, (skew, offset)
        assert clock.offset_s == offset and clock.uncertainty_s < 0.5
        before = await db_now(pool)
        now = clock.now()
        after = await db_now(pool)
        # Off by at most half the sample's round trip, and truncated to whole milliseconds.
        error = dt.timedelta(seconds=clock.uncertainty_s, milliseconds=1)
        assert before - error <= now <= after + error, (before, now, after)
        assert now.microsecond % 1000 == 0 and now.tzinfo is not None


async def test_now_counts_on_monotonically_and_never_goes_back(pool: asyncpg.Pool) -> None:
    mono = [1000.0]
    clock = DbClock(pool, monotonic=lambda: mono[0], rounds=1)
    with pytest.raises(RuntimeError):
        clock.now()
    await clock.sample()
    first = clock.now()
    mono[0] += 2.5
    assert clock.now() - first == dt.timedelta(seconds=2.5)
    later = clock.now()
    # A new sample that puts the estimate back (the monotonic clock ran fast) does not
    # move now() back: it stays put until PostgreSQL's time catches up.
    mono[0] -= 10.0
    await clock.sample()
    assert clock.now() == later
    assert clock.samples == 2


async def test_the_watch_sets_the_gauge_and_warns_once_per_move(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    clock = DbClock(pool, wall=lambda: time.time() + SKEW_S)
    watch = ClockWatch(clock, warn_offset_s=1.0)
    with caplog.at_level(logging.WARNING, logger="steplog.clock"):
        offset = await watch.check()
        assert abs(metrics.CLOCK_OFFSET_SECONDS._value.get() - offset) < 1e-9
        watch.report(offset - 0.3)  # about the same: no second warning
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and "ahead of PostgreSQL" in warned[0], warned
        watch.report(offset - 2.0)  # moved by more than the threshold: warned again
        watch.report(0.01)  # back within
        assert len(caplog.records) == 3
        assert "within" in caplog.records[-1].getMessage()
    watch.report(0.0)


async def test_timers_are_due_by_postgres_clock_not_the_firers(
    pool: asyncpg.Pool, store: EventStore, bus: Bus, redis: aioredis.Redis
) -> None:
    execution_id = await start(store)
    now = await db_now(pool)
    await store.append(
        execution_id,
        1,
        [NewEvent("PassStateEntered", b'{"type":"PassStateEntered"}', now)],
        set_timers=[
            TimerSpec("past", now - dt.timedelta(seconds=1)),
            # What a firer whose clock runs 45 s ahead took for due.
            TimerSpec("ahead", now + dt.timedelta(seconds=SKEW_S - 5)),
        ],
    )
    service = TimerService(store, bus, lease_s=10)  # no clock: PostgreSQL's
    assert await service.tick() == 1
    assert await fired(redis, bus) == ["past"]
    claim = await pool.fetchrow(
        "SELECT claimed_until, fired_due FROM timers WHERE timer_id = 'past'"
    )
    assert claim["claimed_until"] is None and claim["fired_due"] is not None
    assert await store.claim_due_timers(None, 10, lease_s=10) == []
    # The lease is PostgreSQL's time plus lease_s.
    await pool.execute("UPDATE timers SET due_at = clock_timestamp() WHERE timer_id = 'ahead'")
    (claimed,) = await store.claim_due_timers(None, 10, lease_s=10)
    assert claimed.claimed_at is not None and claimed.claimed_until is not None
    assert claimed.claimed_until - claimed.claimed_at == dt.timedelta(seconds=10)
    assert abs((claimed.claimed_at - await db_now(pool)).total_seconds()) < 1


PASS = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}


async def test_a_decision_is_never_stamped_before_the_last_event(store: EventStore) -> None:
    service = EngineService(store, clock=lambda: T0 + dt.timedelta(seconds=60))
    await service.register("default", "pass", PASS)
    # Started by a process whose clock read 60 s later than the engine's below.
    record, *_ = await service.start("default", "pass", {}, None)
    assert record.started_at == T0 + dt.timedelta(seconds=60)
    state = await service.load_state(record.execution_id)
    assert state.last_event_time == iso_millis(record.started_at)
    decision, stored = await service.apply(state, Begin(now=T0))
    assert decision.state.status == "SUCCEEDED"
    assert {e.timestamp for e in stored} == {record.started_at}
    assert decision.state.last_event_time == iso_millis(record.started_at)
    assert await service.state_at(record.execution_id) == decision.state


def test_a_fired_timer_is_stamped_no_earlier_than_its_due_time() -> None:
    due = T0 + dt.timedelta(seconds=5)
    state = ExecutionState(
        execution_id="x",
        last_event_time=iso_millis(T0),
        timers={"w": TimerInfo(frame="", purpose="wait", due=iso_millis(due))},
    )
    early = TimerFired(timer_id="x:w", now=due - dt.timedelta(milliseconds=3))
    assert no_earlier(state, early).now == due
    late = TimerFired(timer_id="x:w", now=due + dt.timedelta(seconds=1))
    assert no_earlier(state, late) is late
    # A timer no longer pending: only the last event bounds it.
    gone = TimerFired(timer_id="x:other", now=T0 - dt.timedelta(seconds=1))
    assert no_earlier(state, gone).now == T0
    assert no_earlier(ExecutionState(), gone) is gone
