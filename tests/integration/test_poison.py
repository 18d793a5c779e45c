"""No execution is stranded by its own data, through the real engine loop on real
PostgreSQL and Redis: each kind of poison ends its execution FAILED with
States.Runtime within seconds (before, the engine retried the same trigger every
~5 s for as long as it lived); a trigger that keeps failing for any other reason is
dead-lettered with its execution failed, and a metric counts it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import prometheus_client
import pytest
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore
from engine.core.state import ExecutionState
from engine.core.triggers import Trigger
from engine.loops.engine_loop import Engine
from engine.messages import ENGINE_GROUP, Begin
from engine.service import EngineService
from steplog.settings import Settings
from tests.serving import Running, running_steplog

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
# Promptly: one decision, not a retry loop (the engine's back-off alone reaches 5 s).
PROMPTLY_S = 10.0


def wait_on(field: str, value: Any) -> dict[str, Any]:
    return {"StartAt": "W", "States": {"W": {"Type": "Wait", field: value, "End": True}}}


POISONS: dict[str, tuple[dict[str, Any], Any, str]] = {
    "seconds-path-1e300": (
        wait_on("SecondsPath", "$.s"),
        {"s": 1e300},
        # jsonb gives the number back as 1 and 300 zeros; stored as sent, it is 1.0E300.
        "The SecondsPath parameter cannot be parsed as a long value: $.s == 1",
    ),
    "seconds-path-huge-integer": (
        wait_on("SecondsPath", "$.s"),
        {"s": 10**30},
        f"The SecondsPath parameter cannot be parsed as a long value: $.s == {10**30}",
    ),
    "seconds-path-past-9999": (
        wait_on("SecondsPath", "$.s"),
        {"s": 2**62},
        "The Wait state's due time is out of range",
    ),
    "timestamp-year-99999": (
        wait_on("TimestampPath", "$.t"),
        {"t": "99999-01-01T00:00:00Z"},
        "The TimestampPath parameter does not reference a valid ISO-8601",
    ),
    "timestamp-offset-past-9999": (
        wait_on("TimestampPath", "$.t"),
        {"t": "9999-12-31T23:59:59-05:00"},
        "The Wait state's due time is out of range",
    ),
    "timeout-seconds-path-huge": (
        {
            "StartAt": "T",
            "States": {
                "T": {
                    "Type": "Task",
                    "Resource": "test:echo",
                    "TimeoutSecondsPath": "$.n",
                    "End": True,
                }
            },
        },
        {"n": 10**20},
        "The TimeoutSecondsPath field refers to value",
    ),
    "lone-surrogate-from-string-to-json": (
        {
            "StartAt": "P",
            "States": {
                "P": {
                    "Type": "Pass",
                    "Parameters": {"v.$": "States.StringToJson($.s)"},
                    "End": True,
                }
            },
        },
        {"s": '"\\ud800"'},
        "A string is not valid Unicode",
    ),
}


def metric(name: str, reason: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(name, {"reason": reason})
    return value or 0.0


async def dead_reasons(redis: aioredis.Redis, stream: str) -> list[Any]:
    entries: Any = await redis.xrange(stream)
    return [fields[b"dead_reason"] for _, fields in entries]


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        yield running


@pytest.mark.parametrize("poison", sorted(POISONS))
async def test_a_poisoned_execution_fails_promptly_with_states_runtime(
    app: Running, eventually: Any, poison: str
) -> None:
    definition, execution_input, cause = POISONS[poison]
    await app.register("poison", definition)
    execution_id = await app.start_id("poison", execution_input)
    body = await app.ended(eventually, execution_id, timeout_s=PROMPTLY_S)
    assert body["status"] == "FAILED"
    assert body["error"] == "States.Runtime"
    assert cause in body["cause"]


async def test_a_nul_built_by_an_intrinsic_ends_the_execution_promptly(
    app: Running, eventually: Any
) -> None:
    # AWS keeps a NUL in a string. PostgreSQL's jsonb cannot store one, json and text
    # can: whichever the store uses, the execution ends, and if the store refuses the
    # data the execution fails with a cause that says so.
    await app.register(
        "nul",
        {
            "StartAt": "P",
            "States": {
                "P": {
                    "Type": "Pass",
                    "Parameters": {"v.$": "States.StringToJson($.s)"},
                    "Next": "Hold",
                },
                "Hold": {"Type": "Wait", "Seconds": 0, "End": True},
            },
        },
    )
    execution_id = await app.start_id("nul", {"s": '"a\\u0000b"'})
    body = await app.ended(eventually, execution_id, timeout_s=PROMPTLY_S)
    # Events are stored as json (migration 0005), which keeps a NUL: the execution goes on.
    assert body["status"] == "SUCCEEDED", body
    assert body["output"] == {"v": "a\x00b"}


async def test_a_definition_that_no_longer_compiles_fails_its_executions(
    app: Running, eventually: Any
) -> None:
    # As after an upgrade whose compiler refuses what an older one accepted: the stored
    # version is not valid today (written past the service's validation).
    broken = {"StartAt": "Nowhere", "States": {"A": {"Type": "Pass", "End": True}}}
    await app.resources.store.put_workflow("default", "broken", broken)
    failures = metric("steplog_executions_failed_by_engine_total", "invalid_definition")
    execution_id = await app.start_id("broken", {})
    body = await app.ended(eventually, execution_id, timeout_s=PROMPTLY_S)
    assert body["status"] == "FAILED" and body["error"] == "States.Runtime"
    assert "its workflow definition no longer compiles" in body["cause"]
    assert "Nowhere" in body["cause"]

    # Counted after the append commits: the read model may show the failure first.
    async def counted() -> bool:
        return metric("steplog_executions_failed_by_engine_total", "invalid_definition") >= (
            failures + 1
        )

    await eventually(counted)
    assert metric("steplog_executions_failed_by_engine_total", "invalid_definition") == (
        failures + 1
    )


# --- a trigger that keeps failing for a reason decide cannot see -----------------------------


class FailingFor(EngineService):
    """The real service, except that applying a trigger to the given workflow raises
    an error that is neither an infrastructure error nor the execution's own (a bug in
    the engine, say) - the case max_deliveries bounds."""

    def __init__(self, store: EventStore, workflow: str) -> None:
        super().__init__(store)
        self.workflow = workflow
        self.attempts = 0

    async def apply(self, state: ExecutionState, trigger: Trigger) -> Any:
        if state.workflow == self.workflow:
            self.attempts += 1
            raise RuntimeError("a bug in the engine")
        return await super().apply(state, trigger)


async def _run(engine: Engine) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(engine.run(stop))


async def _status(service: EngineService, execution_id: UUID) -> ExecutionState | None:
    state = await service.state_at(execution_id)
    return state if state.ended else None


@pytest.mark.redis_cluster
async def test_a_trigger_failing_max_deliveries_times_is_dead_lettered_with_its_execution_failed(
    store: EventStore, bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    service = FailingFor(store, "cursed")
    await service.register("default", "cursed", wait_on("Seconds", 1))
    record, *_ = await service.start("default", "cursed", {}, None, T0)
    execution_id = record.execution_id
    await bus.add_trigger(execution_id, Begin())
    dead_before = metric("steplog_triggers_dead_lettered_total", "repeated_failure")
    engine = Engine(service, bus, max_deliveries=3, block_ms=50)
    stop, task = await _run(engine)
    try:
        state = await eventually(lambda: _status(service, execution_id), timeout_s=PROMPTLY_S)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert service.attempts == 3
    assert state.status == "FAILED" and state.error == "States.Runtime"
    assert state.cause == (
        "The engine gave up on a Begin trigger of this execution after 3 failed attempts; "
        "the last error: RuntimeError: a bug in the engine"
    )
    stream = bus.triggers_stream(bus.partition_of(execution_id))
    assert await dead_reasons(redis, bus.keys.dead_letters(stream)) == [b"repeated failure"]
    assert (await redis.xpending(stream, ENGINE_GROUP))["pending"] == 0
    assert metric("steplog_triggers_dead_lettered_total", "repeated_failure") == dead_before + 1


@pytest.mark.redis_cluster
async def test_a_trigger_delivered_too_often_is_dead_lettered_with_its_execution_failed(
    store: EventStore, bus: Bus, redis: aioredis.Redis, eventually: Any
) -> None:
    service = EngineService(store)
    await service.register("default", "wf", wait_on("Seconds", 1))
    record, *_ = await service.start("default", "wf", {}, None, T0)
    execution_id = record.execution_id
    stream = bus.triggers_stream(bus.partition_of(execution_id))
    await bus.ensure_group(stream, ENGINE_GROUP)
    await bus.add_trigger(execution_id, Begin())
    # Two engines took it and died (the second claimed it from the first).
    await bus.read_group(ENGINE_GROUP, "dead-1", [stream])
    await bus.autoclaim(stream, ENGINE_GROUP, "dead-2", 0)
    dead_before = metric("steplog_triggers_dead_lettered_total", "too_many_deliveries")
    engine = Engine(service, bus, max_deliveries=2, visibility_timeout_s=0.2, block_ms=50)
    stop, task = await _run(engine)
    try:
        state = await eventually(lambda: _status(service, execution_id), timeout_s=PROMPTLY_S)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert state.status == "FAILED" and state.error == "States.Runtime"
    assert state.cause == (
        "The engine gave up on a Begin trigger of this execution: it was delivered 3 times "
        "without being recorded (the limit is 2)."
    )
    assert await dead_reasons(redis, bus.keys.dead_letters(stream)) == [b"too many deliveries"]
    assert metric("steplog_triggers_dead_lettered_total", "too_many_deliveries") == (
        dead_before + 1
    )
