"""A start makes the execution's first decision and commits it with the start (issue #13):
one commit instead of two, and no round through the relay and the engine before the
first states run. Through HTTP against a running steplog, real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest

from engine import messages
from steplog.settings import Settings
from tests.serving import Running, running_steplog

PASSES = {
    "StartAt": "A",
    "States": {
        "A": {"Type": "Pass", "Result": {"a": 1}, "ResultPath": "$.a", "Next": "B"},
        "B": {"Type": "Pass", "End": True},
    },
}
TASK_FIRST = {
    "StartAt": "Work",
    "States": {"Work": {"Type": "Task", "Resource": "test:echo", "End": True}},
}
WAIT_FIRST = {
    "StartAt": "Hold",
    "States": {"Hold": {"Type": "Wait", "Seconds": 1, "Next": "Done"}, "Done": {"Type": "Succeed"}},
}
FAILS_AT_ONCE = {
    "StartAt": "Pick",
    "States": {"Pick": {"Type": "Pass", "InputPath": "$.missing", "End": True}},
}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        yield running


async def history(app: Running, execution_id: str) -> list[dict[str, Any]]:
    status, body = await app.call("GET", f"/v1/executions/{execution_id}/history")
    assert status == 200, body
    return list(body["events"])


async def begins_sent(app: Running, execution_id: str) -> int:
    """Begin triggers published for the execution (entries stay after their ack)."""
    bus = app.resources.bus
    count = 0
    for stream in bus.triggers_streams():
        for _, fields in await bus.redis.xrange(stream):
            if fields.get(b"execution_id") == execution_id.encode() and isinstance(
                messages.decode_trigger(fields[b"message"]), messages.Begin
            ):
                count += 1
    return count


async def relayed(app: Running, execution_id: str) -> int:
    """Events of the execution the relay has published."""
    bus = app.resources.bus
    count = 0
    for stream in bus.events_streams():
        for _, fields in await bus.redis.xrange(stream):
            count += fields.get(b"execution_id") == execution_id.encode()
    return count


async def test_a_start_whose_first_states_do_not_block_answers_their_end(
    app: Running, eventually: Any
) -> None:
    await app.register("passes", PASSES)
    status, started = await app.start("passes", {"x": 1})
    assert status == 201
    assert started["status"] == "SUCCEEDED" and started["output"] == {"x": 1, "a": {"a": 1}}
    assert started["stopped_at"] is not None
    status, read = await app.call("GET", f"/v1/executions/{started['execution_id']}")
    assert (status, read) == (200, started)
    events = await history(app, started["execution_id"])
    assert [e["type"] for e in events] == [
        "ExecutionStarted",
        "PassStateEntered",
        "PassStateExited",
        "PassStateEntered",
        "PassStateExited",
        "ExecutionSucceeded",
    ]
    # One commit: every event is stamped with the start's time.
    assert {e["timestamp"] for e in events} == {started["started_at"]}

    # The relay published them with no Begin (the engine had nothing to begin).
    async def all_relayed() -> bool:
        return await relayed(app, started["execution_id"]) == 6

    await eventually(all_relayed)
    assert await begins_sent(app, started["execution_id"]) == 0


async def test_a_start_whose_first_state_is_a_task_schedules_it_with_the_start(
    app: Running, eventually: Any
) -> None:
    await app.register("task", TASK_FIRST)
    status, started = await app.start("task", {"n": 7})
    assert (status, started["status"]) == (201, "RUNNING")
    pool = app.resources.pool
    types = await pool.fetch(
        "SELECT type FROM events WHERE execution_id = $1 AND seq <= 3 ORDER BY seq",
        UUID(started["execution_id"]),
    )
    # Committed with the start, before the response.
    assert [r["type"] for r in types][:3] == [
        "ExecutionStarted",
        "TaskStateEntered",
        "TaskScheduled",
    ]
    done = await app.ended(eventually, started["execution_id"])
    assert (done["status"], done["output"]) == ("SUCCEEDED", {"n": 7})
    assert await begins_sent(app, started["execution_id"]) == 0


async def test_a_start_whose_first_state_waits_sets_its_timer_with_the_start(
    app: Running, eventually: Any
) -> None:
    await app.register("wait", WAIT_FIRST)
    status, started = await app.start("wait", {})
    assert (status, started["status"]) == (201, "RUNNING")
    timers = await app.resources.pool.fetchval(
        "SELECT count(*) FROM timers WHERE execution_id = $1", UUID(started["execution_id"])
    )
    assert timers == 1
    done = await app.ended(eventually, started["execution_id"])
    assert done["status"] == "SUCCEEDED"


async def test_a_start_repeated_by_name_records_its_first_decision_once(app: Running) -> None:
    await app.register("passes", PASSES)
    first_status, first = await app.start("passes", {"x": 1}, name="once")
    again_status, again = await app.start("passes", {"x": 1}, name="once")
    assert (first_status, again_status) == (201, 200)
    assert again == first
    assert len(await history(app, first["execution_id"])) == 6


async def test_a_first_decision_that_fails_the_execution_is_answered(app: Running) -> None:
    await app.register("fails", FAILS_AT_ONCE)
    status, started = await app.start("fails", {"present": 1})
    assert status == 201
    assert (started["status"], started["error"]) == ("FAILED", "States.Runtime")
    # Answered from the events it committed, as a read of it answers.
    status, read = await app.call("GET", f"/v1/executions/{started['execution_id']}")
    assert (status, read) == (200, started)
    events = await history(app, started["execution_id"])
    assert events[-1]["type"] == "ExecutionFailed"
