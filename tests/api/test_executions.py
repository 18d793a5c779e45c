"""Execution routes through HTTP: start, read, list, history, stop, state."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp.test_utils import TestClient

from engine.adapters.store import EventStore, NewEvent
from engine.core import events as ev
from engine.core.timestamps import iso_millis
from projections.runner import catch_up
from tests.api.helpers import register, start

Client = TestClient[Any, Any]

WAIT_DEFINITION = {
    "StartAt": "Hold",
    "States": {"Hold": {"Type": "Wait", "Seconds": 3600, "End": True}},
}


async def test_a_started_execution_is_readable_at_once(client: Client, pool: asyncpg.Pool) -> None:
    await register(client, "wf")

    resp = await client.post("/v1/workflows/wf/executions", json={"input": {"order": 1}})

    assert resp.status == 201
    created = await resp.json()
    eid = created["execution_id"]
    assert resp.headers["Location"] == f"/v1/executions/{eid}"
    assert created["status"] == "RUNNING"
    assert created["input"] == {"order": 1}
    assert (created["workflow"], created["version"], created["name"]) == ("wf", 1, eid)
    # Nothing projected yet: the read falls back to replaying the log.
    assert await pool.fetchval("SELECT count(*) FROM executions_view") == 0
    got = await client.get(f"/v1/executions/{eid}")
    assert got.status == 200
    assert await got.json() == created
    assert await pool.fetchval("SELECT count(*) FROM events") == 1


async def test_the_same_name_and_input_return_the_same_execution(client: Client) -> None:
    await register(client, "wf")
    body = {"input": {"a": [1, 2]}, "name": "order-17"}
    first = await client.post("/v1/workflows/wf/executions", json=body)
    again = await client.post("/v1/workflows/wf/executions", json=body)

    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["execution_id"] == (await again.json())["execution_id"]
    assert (await again.json())["name"] == "order-17"


async def test_concurrent_starts_with_one_name_make_one_execution(
    client: Client, pool: asyncpg.Pool
) -> None:
    await register(client, "wf")
    body = {"input": 5, "name": "race"}

    responses = await asyncio.gather(
        *(client.post("/v1/workflows/wf/executions", json=body) for _ in range(8))
    )

    assert sorted(r.status for r in responses) == [200] * 7 + [201]
    assert len({(await r.json())["execution_id"] for r in responses}) == 1
    assert await pool.fetchval("SELECT count(*) FROM executions") == 1


async def test_the_read_model_answers_once_projected(
    client: Client, pool: asyncpg.Pool, store: EventStore
) -> None:
    await register(client, "wf")
    eid = (await start(client, "wf", input=[1]))["execution_id"]
    stored = (await store.load(UUID(eid)))[0]
    finished_at = stored.timestamp + dt.timedelta(seconds=2)
    done = ev.ExecutionSucceeded(output={"sum": 3})
    await store.append(
        stored.execution_id, 1, [NewEvent(ev.event_type(done), ev.encode_event(done), finished_at)]
    )
    await catch_up(pool, store)

    body = await (await client.get(f"/v1/executions/{eid}")).json()

    assert body["status"] == "SUCCEEDED"
    assert body["output"] == {"sum": 3}
    assert body["input"] == [1]
    assert body["error"] is None and body["cause"] is None
    # RFC 3339 UTC with milliseconds and a Z, like every timestamp of the API.
    assert body["stopped_at"] == iso_millis(finished_at)
    assert body["started_at"] == iso_millis(stored.timestamp)
    assert _ts(body["stopped_at"]) == finished_at.replace(
        microsecond=finished_at.microsecond // 1000 * 1000
    )


async def test_listing_pages_stay_correct_while_executions_arrive(
    client: Client, pool: asyncpg.Pool, store: EventStore
) -> None:
    await register(client, "wf")
    await register(client, "other")
    ids = [(await start(client, "wf", input=i))["execution_id"] for i in range(5)]
    await start(client, "other")
    await catch_up(pool, store)

    seen: list[str] = []
    url = "/v1/executions?workflow=wf&limit=2"
    while True:
        page = await (await client.get(url)).json()
        seen += [e["execution_id"] for e in page["executions"]]
        # A new execution between pages lands before the cursor, never inside the walk.
        await start(client, "wf", input="late")
        await catch_up(pool, store)
        if page["next_cursor"] is None:
            break
        url = f"/v1/executions?workflow=wf&limit=2&cursor={page['next_cursor']}"

    assert seen == list(reversed(ids))


async def test_listing_filters_by_status(
    client: Client, pool: asyncpg.Pool, store: EventStore
) -> None:
    await register(client, "wf")
    running = (await start(client, "wf"))["execution_id"]
    stopped = (await start(client, "wf"))["execution_id"]
    await client.post(f"/v1/executions/{stopped}/stop", json={})
    await catch_up(pool, store)

    by_status = {
        s: [
            e["execution_id"]
            for e in (await (await client.get(f"/v1/executions?status={s}")).json())["executions"]
        ]
        for s in ("RUNNING", "ABORTED", "FAILED")
    }

    assert by_status == {"RUNNING": [running], "ABORTED": [stopped], "FAILED": []}


async def test_history_pages_through_every_event(client: Client, store: EventStore) -> None:
    await register(client, "wf")
    eid = (await start(client, "wf", input={"x": 1}))["execution_id"]
    events = [
        ev.PassStateEntered(name="A", input={"x": 1}),
        ev.PassStateExited(name="A", output={"x": 1}),
    ]
    now = dt.datetime.now(dt.UTC)
    await store.append(
        UUID(eid), 1, [NewEvent(ev.event_type(e), ev.encode_event(e), now) for e in events]
    )

    collected: list[dict[str, Any]] = []
    url = f"/v1/executions/{eid}/history?limit=2"
    pages = 0
    while url:
        page = await (await client.get(url)).json()
        collected += page["events"]
        pages += 1
        url = (
            page["next_cursor"]
            and f"/v1/executions/{eid}/history?limit=2&cursor={page['next_cursor']}"
        )

    assert pages == 2
    assert [e["seq"] for e in collected] == [1, 2, 3]
    assert [e["type"] for e in collected] == [
        "ExecutionStarted",
        "PassStateEntered",
        "PassStateExited",
    ]
    assert collected[0]["details"]["input"] == {"x": 1}
    assert collected[0]["details"]["workflow"] == "wf"
    assert collected[2]["details"] == {"name": "A", "output": {"x": 1}}
    assert all(e["timestamp"].endswith("Z") for e in collected)


async def test_stop_aborts_a_running_execution(client: Client, pool: asyncpg.Pool) -> None:
    await register(client, "hold", WAIT_DEFINITION)
    eid = (await start(client, "hold"))["execution_id"]

    resp = await client.post(f"/v1/executions/{eid}/stop", json={"error": "Halt", "cause": "ops"})

    assert resp.status == 200
    body = await resp.json()
    assert (body["status"], body["error"], body["cause"]) == ("ABORTED", "Halt", "ops")
    assert body["stopped_at"] is not None
    history = await (await client.get(f"/v1/executions/{eid}/history")).json()
    assert history["events"][-1]["type"] == "ExecutionAborted"
    # Stopping again changes nothing.
    count = await pool.fetchval("SELECT count(*) FROM events")
    again = await client.post(f"/v1/executions/{eid}/stop")
    assert again.status == 200
    assert (await again.json())["status"] == "ABORTED"
    assert await pool.fetchval("SELECT count(*) FROM events") == count


async def test_state_at_a_seq(client: Client) -> None:
    await register(client, "hold", WAIT_DEFINITION)
    eid = (await start(client, "hold", input={"k": "v"}))["execution_id"]
    await client.post(f"/v1/executions/{eid}/stop")

    at_start = await (await client.get(f"/v1/executions/{eid}/state?seq=1")).json()
    latest = await (await client.get(f"/v1/executions/{eid}/state")).json()

    assert at_start["execution_id"] == eid
    assert (at_start["seq"], at_start["status"], at_start["input"]) == (1, "RUNNING", {"k": "v"})
    assert latest["status"] == "ABORTED"
    assert latest["seq"] > 1


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)
