"""Read routes through HTTP: listing filters, sort orders and cursors while
executions arrive, history options, state diffs, workflow stats, and bad input
to each (a 4xx problem+json that changes nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.keys import COMMANDS
from engine.adapters.store import EventStore, NewEvent
from engine.core import events as ev
from engine.core import jsondiff
from engine.core.triggers import Begin
from projections.runner import catch_up, catch_up_all
from tests.api.helpers import register, row_counts, start

Client = TestClient[Any, Any]
T0 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


async def seeded(
    store: EventStore, *, workflow: str, name: str, at: dt.datetime, version: int = 1
) -> UUID:
    eid = uuid4()
    started = ev.ExecutionStarted(input={}, workflow=workflow, version=version, name=name)
    await store.start_execution(
        "default",
        workflow,
        version,
        eid,
        name,
        b"{}",
        NewEvent("ExecutionStarted", ev.encode_event(started), at),
    )
    return eid


async def end(store: EventStore, eid: UUID, at: dt.datetime) -> None:
    done = ev.ExecutionSucceeded(output=1)
    await store.append(eid, 1, [NewEvent("ExecutionSucceeded", ev.encode_event(done), at)])


async def ids(client: Client, query: str) -> list[str]:
    resp = await client.get(f"/v1/executions?{query}")
    assert resp.status == 200, await resp.text()
    return [e["execution_id"] for e in (await resp.json())["executions"]]


def z(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def test_listing_filters(client: Client, pool: asyncpg.Pool, store: EventStore) -> None:
    minute = dt.timedelta(minutes=1)
    a = await seeded(store, workflow="wf", name="order-1", at=T0)
    b = await seeded(store, workflow="wf", name="order-2", at=T0 + minute, version=2)
    c = await seeded(store, workflow="wf", name="refund-1", at=T0 + 2 * minute)
    d = await seeded(store, workflow="other", name="order-3", at=T0 + 3 * minute)
    await end(store, a, T0 + 10 * minute)
    await end(store, d, T0 + 20 * minute)
    await catch_up(pool, store)
    a, b, c, d = (str(x) for x in (a, b, c, d))

    assert await ids(client, "workflow=wf") == [c, b, a]
    assert await ids(client, "workflow=wf&order=asc") == [a, b, c]
    assert await ids(client, "workflow=wf&version=2") == [b]
    assert await ids(client, "name_prefix=order-") == [d, b, a]
    assert await ids(client, "name_prefix=order-&workflow=wf&status=RUNNING") == [b]
    assert await ids(client, f"started_after={z(T0 + minute)}") == [d, c, b]
    assert await ids(client, f"started_before={z(T0 + minute)}") == [a]
    between = f"started_after={z(T0 + minute)}&started_before={z(T0 + 3 * minute)}"
    assert await ids(client, between) == [c, b]
    assert await ids(client, f"stopped_after={z(T0 + 15 * minute)}") == [d]
    assert await ids(client, f"stopped_before={z(T0 + 15 * minute)}") == [a]
    assert await ids(client, "name_prefix=zzz") == []


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_paging_while_executions_arrive_misses_and_repeats_nothing(
    client: Client, pool: asyncpg.Pool, store: EventStore, order: str
) -> None:
    await register(client, "wf")
    existing = {(await start(client, "wf", input=i))["execution_id"] for i in range(12)}
    await catch_up(pool, store)
    arrived: list[str] = []
    stop = asyncio.Event()

    async def keep_starting() -> None:
        while not stop.is_set():
            arrived.append((await start(client, "wf", input="late"))["execution_id"])
            await catch_up(pool, store)

    producer = asyncio.create_task(keep_starting())
    seen: list[str] = []
    url = f"/v1/executions?workflow=wf&limit=5&order={order}"
    try:
        while True:
            page = await (await client.get(url)).json()
            seen += [e["execution_id"] for e in page["executions"]]
            await asyncio.sleep(0.01)  # let executions arrive between pages
            if page["next_cursor"] is None:
                break
            url = f"/v1/executions?workflow=wf&limit=5&order={order}&cursor={page['next_cursor']}"
            assert len(seen) < 1000, "the walk does not end"
    finally:
        stop.set()
        await producer

    assert len(seen) == len(set(seen)), "an execution was listed twice"
    assert existing <= set(seen), "an execution that existed before the walk was missed"
    assert set(seen) <= existing | set(arrived)
    assert arrived, "nothing arrived during the walk"


async def test_a_cursor_belongs_to_its_sort_order(
    client: Client, store: EventStore, pool: asyncpg.Pool
) -> None:
    for i in range(3):
        await seeded(store, workflow="wf", name=f"n{i}", at=T0 + dt.timedelta(seconds=i))
    await catch_up(pool, store)
    cursor = (await (await client.get("/v1/executions?limit=1")).json())["next_cursor"]

    resp = await client.get(f"/v1/executions?limit=1&order=asc&cursor={cursor}")

    assert resp.status == 400
    assert (await resp.json())["errors"][0]["path"] == "cursor"


PASS_CHAIN = {
    "StartAt": "A",
    "States": {
        "A": {"Type": "Pass", "Result": {"a": 1}, "ResultPath": "$.a", "Next": "B"},
        "B": {"Type": "Pass", "Result": [1, 2], "ResultPath": "$.b", "End": True},
    },
}


async def _run_chain(client: Client, store: EventStore) -> str:
    """An execution of PASS_CHAIN run to its end, decided in-process (no engine role)."""
    await register(client, "chain", PASS_CHAIN)
    eid = (await start(client, "chain", input={"x": 1}))["execution_id"]
    service = client.server.app[COMMANDS]
    state = await service.load_state(UUID(eid))
    await service.apply(state, Begin(now=dt.datetime.now(dt.UTC)))
    return str(eid)


async def test_history_newest_first_and_without_data(client: Client, store: EventStore) -> None:
    eid = await _run_chain(client, store)
    base = f"/v1/executions/{eid}/history"

    pages, url = [], f"{base}?reverse=true&limit=2"
    while url:
        body = await (await client.get(url)).json()
        pages.append([e["seq"] for e in body["events"]])
        url = body["next_cursor"] and f"{base}?reverse=true&limit=2&cursor={body['next_cursor']}"
    lean = (await (await client.get(f"{base}?include_data=false")).json())["events"]
    full = (await (await client.get(base)).json())["events"]

    assert pages == [[6, 5], [4, 3], [2, 1]]
    assert full[0]["details"]["input"] == {"x": 1}
    assert "input" not in lean[0]["details"] and lean[0]["details"]["name"] == eid
    assert "output" not in lean[-1]["details"] and "output" in full[-1]["details"]
    assert [e["type"] for e in lean] == [e["type"] for e in full]


async def test_state_diff_between_two_seqs(client: Client, store: EventStore) -> None:
    eid = await _run_chain(client, store)

    resp = await client.get(f"/v1/executions/{eid}/state/diff?from=2&to=5")
    body = await resp.json()
    at2 = await (await client.get(f"/v1/executions/{eid}/state?seq=2")).json()
    at5 = await (await client.get(f"/v1/executions/{eid}/state?seq=5")).json()

    assert resp.status == 200
    assert (body["from"], body["to"]) == (2, 5)
    assert [e["seq"] for e in body["events"]] == [3, 4, 5]
    assert jsondiff.apply(at2, body["patch"]) == at5
    assert {"op": "replace", "path": "/seq", "value": 5} in body["patch"]
    same = await (await client.get(f"/v1/executions/{eid}/state/diff?from=4&to=4")).json()
    assert (same["events"], same["patch"]) == ([], [])


async def test_workflow_stats_window(client: Client, pool: asyncpg.Pool, store: EventStore) -> None:
    await _run_chain(client, store)
    await catch_up_all(pool, store)

    body = await (await client.get("/v1/workflows/chain/stats")).json()
    earlier = await (
        await client.get(
            "/v1/workflows/chain/stats?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z"
        )
    ).json()

    assert body["executions"]["total"] == 1 and body["executions"]["by_status"]["SUCCEEDED"] == 1
    assert body["executions"]["duration_ms"]["p50"] >= 0
    assert [(s["name"], s["entered"], s["succeeded"]) for s in body["states"]] == [
        ("A", 1, 1),
        ("B", 1, 1),
    ]
    assert earlier["executions"]["total"] == 0 and earlier["states"] == []
    assert earlier["executions"]["duration_ms"] == {"p50": None, "p95": None, "p99": None}


BAD: list[tuple[str, int, str]] = [
    ("/v1/executions?order=sideways", 400, "invalid_request"),
    ("/v1/executions?started_after=yesterday", 400, "invalid_request"),
    ("/v1/executions?started_after=2026-01-01T00:00:00", 400, "invalid_request"),  # no zone
    (
        "/v1/executions?started_after=2026-01-02T00:00:00Z&started_before=2026-01-01T00:00:00Z",
        400,
        "invalid_request",
    ),
    (
        "/v1/executions?stopped_after=2026-01-02T00:00:00Z&stopped_before=2026-01-02T00:00:00Z",
        400,
        "invalid_request",
    ),
    ("/v1/executions?version=0", 400, "invalid_request"),
    ("/v1/executions?name_prefix=", 400, "invalid_request"),
    ("/v1/executions?cursor=WzEsMl0", 400, "invalid_request"),  # [1,2]: not a listing cursor
    ("/v1/executions/{seed}/history?reverse=maybe", 400, "invalid_request"),
    ("/v1/executions/{seed}/history?include_data=2", 400, "invalid_request"),
    ("/v1/executions/{seed}/history?cursor=LTE", 400, "invalid_request"),  # -1
    ("/v1/executions/{seed}/history.jsonl?x=1", 400, "invalid_request"),
    (f"/v1/executions/{uuid4()}/history.jsonl", 404, "execution_not_found"),
    ("/v1/executions/{seed}/state/diff?from=1", 400, "invalid_request"),
    ("/v1/executions/{seed}/state/diff?from=0&to=1", 400, "invalid_request"),
    ("/v1/executions/{seed}/state/diff?from=2&to=1", 400, "invalid_request"),
    ("/v1/executions/{seed}/state/diff?from=1&to=99", 400, "invalid_request"),
    (f"/v1/executions/{uuid4()}/state/diff?from=1&to=1", 404, "execution_not_found"),
    ("/v1/workflows/nope/stats", 404, "workflow_not_found"),
    ("/v1/workflows/wf/stats?version=9", 404, "workflow_not_found"),
    (
        "/v1/workflows/wf/stats?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        400,
        "invalid_request",
    ),
    ("/v1/workflows/wf/stats?from=soon", 400, "invalid_request"),
    ("/v1/workflows/bad%20name/stats", 400, "invalid_request"),
]


@pytest.mark.parametrize(("path", "status", "code"), BAD)
async def test_bad_read_requests_are_refused_and_change_nothing(
    client: Client, pool: asyncpg.Pool, path: str, status: int, code: str
) -> None:
    await register(client, "wf")
    seed = await start(client, "wf", input={"seed": 1}, name="seed")
    path = path.replace("{seed}", seed["execution_id"])
    before = await row_counts(pool)

    resp = await client.get(path)

    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code
    assert await row_counts(pool) == before


async def test_metrics_export_projection_lag(
    client: Client, pool: asyncpg.Pool, store: EventStore
) -> None:
    await register(client, "wf")
    await start(client, "wf")

    behind = await (await client.get("/metrics")).text()
    await catch_up_all(pool, store)
    current = await (await client.get("/metrics")).text()

    assert 'steplog_projection_lag_events{projection="executions"} 1.0' in behind
    assert 'steplog_projection_lag_events{projection="state_stats"} 0.0' in current
