"""Values as the API writes them (issue 9, item 5): sizes as stored, duplicate keys,
``null`` for what is not known yet, and one rule for a seq past the end."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from aiohttp.test_utils import TestClient

from tests.api.helpers import register, row_counts

Client = TestClient[Any, Any]


async def _start_raw(client: Client, input_json: bytes) -> tuple[int, bytes]:
    resp = await client.post(
        "/v1/workflows/wf/executions",
        data=b'{"input":' + input_json + b"}",
        headers={"Content-Type": "application/json"},
    )
    return resp.status, await resp.read()


async def test_large_numbers_are_stored_at_the_size_they_were_sent(
    client: Client, pool: asyncpg.Pool
) -> None:
    # jsonb wrote each 1e308 as 309 digits: 10,000 of them took 3.1 MB per copy.
    numbers = b"[" + b",".join([b"1e308"] * 10_000) + b"]"
    await register(client)
    status, body = await _start_raw(client, numbers)
    assert status == 201, body
    eid = UUID(msgspec.json.decode(body)["execution_id"])
    stored_input = await pool.fetchval(
        "SELECT octet_length(input::text) FROM executions WHERE execution_id = $1", eid
    )
    stored_event = await pool.fetchval(
        "SELECT octet_length(data::text) FROM events WHERE execution_id = $1 AND seq = 1", eid
    )
    assert stored_input == len(numbers)
    # The event adds its other fields (names, ARNs) around the input, nothing per number.
    assert len(numbers) < stored_event < len(numbers) + 1000


async def test_whitespace_is_dropped_and_a_duplicate_key_is_kept_as_it_runs(
    client: Client,
) -> None:
    await register(client)
    status, body = await _start_raw(client, b'{ "b" : [1, 2.50] ,\n "a":{} }')
    assert status == 201
    assert b'"input":{"b":[1,2.50],"a":{}}' in body
    # The execution reads the last of duplicate keys; that is what is kept and shown.
    status, body = await _start_raw(client, b'{"a":1,"b":2,"a":3}')
    assert status == 201
    assert b'"input":{"a":3,"b":2}' in body


async def test_input_that_is_not_json_or_out_of_range_is_a_400_and_changes_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    await register(client)
    before = await row_counts(pool)
    for bad in (b"[1e400]", b'"\\ud800"'):
        status, body = await _start_raw(client, bad)
        assert status == 400, body
        # Which 400 (the body parser's or the start's) is the API contract's business.
        assert msgspec.json.decode(body)["code"] in ("invalid_request", "malformed_json")
    assert await row_counts(pool) == before


async def test_state_shows_null_for_times_not_known_yet(client: Client) -> None:
    await register(client)
    _, body = await _start_raw(client, b'{"x":1}')
    eid = msgspec.json.decode(body)["execution_id"]
    resp = await client.get(f"/v1/executions/{eid}/state")
    state = await resp.json()
    assert resp.status == 200 and state["status"] == "RUNNING"
    assert state["stopped_at"] is None and state["started_at"].endswith("Z")
    listed = await (await client.get(f"/v1/executions/{eid}")).json()
    assert listed["stopped_at"] is None and listed["started_at"] == state["started_at"]


async def test_a_seq_past_the_end_is_the_same_400_on_state_and_diff(client: Client) -> None:
    await register(client)
    _, body = await _start_raw(client, b"{}")
    eid = msgspec.json.decode(body)["execution_id"]
    assert (await client.get(f"/v1/executions/{eid}/state?seq=1")).status == 200
    assert (await client.get(f"/v1/executions/{eid}/state/diff?from=1&to=1")).status == 200
    for path, parameter in (("state?seq=999", "seq"), ("state/diff?from=1&to=999", "to")):
        resp = await client.get(f"/v1/executions/{eid}/{path}")
        problem = await resp.json()
        assert (resp.status, problem["code"]) == (400, "invalid_request"), problem
        assert problem["errors"] == [{"path": parameter, "message": "past the last event"}]
        assert "past its end" in problem["detail"]
