"""Invariant 3 on real PostgreSQL: after every trigger the engine handles, the state
it acted on (and caches) equals the state rebuilt by replaying the stored events
with the cache off."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from uuid import UUID

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore
from engine.core.triggers import Begin, TaskCompleted, TimerFired
from engine.loops.engine_loop import Engine
from engine.service import EngineService

ORDER = json.loads((Path(__file__).parents[2] / "examples" / "order.asl.json").read_text())
T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


async def test_engine_state_equals_replay_after_every_trigger(store: EventStore, bus: Bus) -> None:
    service = EngineService(store)
    engine = Engine(service, bus)
    await service.register("default", "order", ORDER)
    record, *_ = await service.start(
        "default", "order", {"order_id": "o", "amount": 5, "hold_seconds": 30}, None, T0
    )
    eid: UUID = record.execution_id

    async def check() -> None:
        acted_on = engine.cache.get(eid)
        assert acted_on is not None
        assert acted_on == await service.state_at(eid)

    state = await engine.apply(eid, Begin(now=T0))
    await check()
    (task_id,) = state.tasks
    state = await engine.apply(
        eid,
        TaskCompleted(
            task_id=task_id, output={"order_id": "o", "amount": 5}, now=T0 + dt.timedelta(seconds=1)
        ),
    )
    await check()
    (timer,) = state.timers
    due = T0 + dt.timedelta(seconds=31)
    state = await engine.apply(eid, TimerFired(timer_id=f"{eid}:{timer}", now=due))
    await check()
    assert state.status == "SUCCEEDED"
    # A redelivered trigger changes nothing, and the state still equals the replay.
    again = await engine.apply(eid, TimerFired(timer_id=f"{eid}:{timer}", now=due))
    assert again == state
    await check()
