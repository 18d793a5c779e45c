"""The walking skeleton end to end, through HTTP against a running steplog with
real PostgreSQL and Redis: register the order example, run its paths, read them back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from steplog.settings import Settings
from tests.serving import Running, running_steplog

ORDER = json.loads((Path(__file__).parents[2] / "examples" / "order.asl.json").read_text())


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        yield running


async def test_order_approve_path(app: Running, eventually: Any) -> None:
    assert (await app.call("PUT", "/v1/workflows/order", {"definition": ORDER}))[0] == 201
    status, started = await app.start(
        "order", {"order_id": "o-1", "amount": 250, "hold_seconds": 0}
    )
    assert status == 201
    done = await app.ended(eventually, started["execution_id"])
    assert done["status"] == "SUCCEEDED"
    assert done["output"] == {"order_id": "o-1", "status": "APPROVED"}
    assert done["started_at"] and done["stopped_at"]

    status, history = await app.call("GET", f"/v1/executions/{started['execution_id']}/history")
    assert status == 200
    types = [e["type"] for e in history["events"]]
    assert types[0] == "ExecutionStarted" and types[-1] == "ExecutionSucceeded"
    assert "TaskScheduled" in types and "TaskSucceeded" in types
    assert [e["seq"] for e in history["events"]] == list(range(1, len(types) + 1))


async def test_order_reject_path_fails_with_error_and_cause(app: Running, eventually: Any) -> None:
    await app.call("PUT", "/v1/workflows/order", {"definition": ORDER})
    # hold_seconds is optional: the README's reject example leaves it out.
    _, started = await app.start("order", {"order_id": "o-2", "amount": 5000})
    done = await app.ended(eventually, started["execution_id"])
    assert done["status"] == "FAILED"
    assert done["error"] == "OrderRejected"
    assert done["cause"] == "The amount is over the approval limit of 1000."


async def test_order_path_through_a_one_second_wait(app: Running, eventually: Any) -> None:
    await app.call("PUT", "/v1/workflows/order", {"definition": ORDER})
    _, started = await app.start("order", {"order_id": "o-3", "amount": 10, "hold_seconds": 1})
    done = await app.ended(eventually, started["execution_id"])
    assert done["status"] == "SUCCEEDED"
    _, history = await app.call("GET", f"/v1/executions/{started['execution_id']}/history")
    events = {e["type"]: e for e in history["events"]}
    entered, exited = events["WaitStateEntered"], events["WaitStateExited"]
    assert entered["details"]["due"]
    # The wait really waited (timestamps are recorded once, when the events were decided).
    from datetime import datetime

    waited = datetime.fromisoformat(exited["timestamp"]) - datetime.fromisoformat(
        entered["timestamp"]
    )
    assert waited.total_seconds() >= 1.0


async def test_fifty_concurrent_starts_with_one_name_give_one_execution(
    app: Running, eventually: Any
) -> None:
    await app.call("PUT", "/v1/workflows/order", {"definition": ORDER})
    input = {"order_id": "o-4", "amount": 1, "hold_seconds": 0}
    results = await asyncio.gather(
        *(app.start("order", input, name="same-name") for _ in range(50))
    )
    ids = {body["execution_id"] for _, body in results}
    statuses = sorted(status for status, _ in results)
    assert len(ids) == 1
    assert statuses.count(201) == 1 and statuses.count(200) == 49
    conflict, body = await app.start("order", {**input, "amount": 2}, name="same-name")
    assert conflict == 409 and body["code"] == "execution_name_conflict"
    rows = await app.resources.pool.fetchval("SELECT count(*) FROM executions")
    assert rows == 1


async def test_replayed_state_equals_the_state_the_engine_acted_on(
    app: Running, eventually: Any
) -> None:
    await app.call("PUT", "/v1/workflows/order", {"definition": ORDER})
    _, started = await app.start("order", {"order_id": "o-5", "amount": 3, "hold_seconds": 0})
    eid = started["execution_id"]
    await app.ended(eventually, eid)
    status, replayed = await app.call("GET", f"/v1/executions/{eid}/state")
    assert status == 200
    assert replayed["status"] == "SUCCEEDED"
    # The state at an earlier seq is the fold of the events up to it.
    _, history = await app.call("GET", f"/v1/executions/{eid}/history")
    last_seq = history["events"][-1]["seq"]
    assert replayed["seq"] == last_seq
    _, at_two = await app.call("GET", f"/v1/executions/{eid}/state?seq=2")
    assert at_two["seq"] == 2 and at_two["status"] == "RUNNING"
    assert at_two["frames"][""]["current"] == "CheckOrder"


async def test_stop_aborts_a_waiting_execution(app: Running, eventually: Any) -> None:
    await app.call("PUT", "/v1/workflows/order", {"definition": ORDER})
    _, started = await app.start("order", {"order_id": "o-6", "amount": 3, "hold_seconds": 60})
    eid = started["execution_id"]

    async def waiting() -> bool:
        _, history = await app.call("GET", f"/v1/executions/{eid}/history")
        return any(e["type"] == "WaitStateEntered" for e in history["events"])

    await eventually(waiting)
    status, _ = await app.call("POST", f"/v1/executions/{eid}/stop", {"cause": "by test"})
    assert status in (200, 202)
    done = await app.ended(eventually, eid)
    assert done["status"] == "ABORTED"
    timers = await app.resources.pool.fetchval("SELECT count(*) FROM timers")
    assert timers == 0
