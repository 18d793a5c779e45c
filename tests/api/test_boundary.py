"""Issue 9: no input, however hostile, gets a 500. Each class found (out-of-range
numbers, invalid UTF-8 and surrogates, NUL anywhere, int overflow in every numeric
parameter, an SSE error after the headers) is a clear 4xx problem+json that
changes nothing."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.schemas import DB_INT_MAX, encode_cursor
from tests.api.helpers import register, row_counts, start

Client = TestClient[Any, Any]
OVER = str(DB_INT_MAX + 1)
HUGE = "9" * 5000  # past Python's int-from-text digit limit too
JSON_HEADERS = {"Content-Type": "application/json"}

# (method, path, raw JSON body or None, expected status, expected code).
# {seed} is a RUNNING execution (no engine runs under the `client` fixture).
CASES: list[tuple[str, str, bytes | None, int, str]] = [
    # int overflow, in every numeric parameter
    ("GET", f"/v1/workflows/wf?version={OVER}", None, 400, "invalid_request"),
    ("GET", f"/v1/workflows/wf?version={HUGE}", None, 400, "invalid_request"),
    ("GET", f"/v1/workflows/wf/stats?version={OVER}", None, 400, "invalid_request"),
    ("GET", f"/v1/executions?version={OVER}", None, 400, "invalid_request"),
    ("GET", f"/v1/executions?limit={OVER}", None, 400, "invalid_request"),
    ("GET", f"/v1/executions/{{seed}}/state?seq={OVER}", None, 400, "invalid_request"),
    ("GET", f"/v1/executions/{{seed}}/state/diff?from=1&to={OVER}", None, 400, "invalid_request"),
    ("GET", f"/v1/executions/{{seed}}/state/diff?from={OVER}&to=1", None, 400, "invalid_request"),
    ("GET", f"/v1/executions/{{seed}}/history?limit={OVER}", None, 400, "invalid_request"),
    (
        "GET",
        f"/v1/executions/{{seed}}/history?cursor={encode_cursor(DB_INT_MAX + 1)}",
        None,
        400,
        "invalid_request",
    ),
    (
        "GET",
        f"/v1/executions?cursor={encode_cursor(['0001-01-01T00:00:00+01:00', str(uuid4()), 'desc'])}",
        None,
        400,
        "invalid_request",
    ),
    ("GET", f"/v1/executions/{{seed}}/events?after={OVER}", None, 400, "invalid_request"),
    # timestamps with no UTC equivalent
    (
        "GET",
        "/v1/executions?started_after=0001-01-01T00:00:00%2B01:00",
        None,
        400,
        "invalid_request",
    ),
    ("GET", "/v1/workflows/wf/stats?to=9999-12-31T23:59:59-01:00", None, 400, "invalid_request"),
    # found by schemathesis: "null" for an optional parameter, a parameter twice
    ("GET", "/v1/workflows/wf?version=null", None, 400, "invalid_request"),
    ("GET", "/v1/executions?version=null&limit=5", None, 400, "invalid_request"),
    ("GET", "/v1/executions/{seed}/state?seq=null", None, 400, "invalid_request"),
    ("GET", "/v1/executions?limit=5&limit=6", None, 400, "invalid_request"),
    ("GET", "/v1/executions?stopped_before=0.5", None, 400, "invalid_request"),
    ("GET", "/v1/workflows/wf/stats?to=0.5", None, 400, "invalid_request"),
    # NUL and control characters in the query and the path
    ("GET", "/v1/executions?workflow=%00", None, 400, "invalid_request"),
    ("GET", "/v1/executions?workflow=wf%0a", None, 400, "invalid_request"),
    ("GET", "/v1/executions?name_prefix=a%00b", None, 400, "invalid_request"),
    ("GET", "/v1/executions?name_prefix=a%0a", None, 400, "invalid_request"),
    ("GET", "/v1/executions?cursor=%00", None, 400, "invalid_request"),
    ("GET", "/v1/workflows/w%00f", None, 400, "invalid_request"),
    ("GET", "/v1/executions/%00", None, 404, "execution_not_found"),
    # numbers out of range, invalid UTF-8, surrogates in the input
    ("POST", "/v1/workflows/wf/executions", b'{"input": 1e400}', 400, "malformed_json"),
    ("POST", "/v1/workflows/wf/executions", b'{"input": {"a": [-1e999]}}', 400, "malformed_json"),
    ("POST", "/v1/workflows/wf/executions", b'{"input": "\xff"}', 400, "malformed_json"),
    ("POST", "/v1/workflows/wf/executions", b'{"input": "\xed\xa0\x80"}', 400, "malformed_json"),
    ("POST", "/v1/workflows/wf/executions", b'{"input": "\\ud800"}', 400, "malformed_json"),
    ("POST", "/v1/workflows/wf/executions", b'{"input": {"\\udfff": 1}}', 400, "malformed_json"),
    ("PUT", "/v1/workflows/wf2", b'{"definition": {"Comment": 1e400}}', 400, "malformed_json"),
    (
        "PUT",
        "/v1/workflows/wf2",
        b'{"definition": {"Comment": "\xed\xa0\x80"}}',
        400,
        "malformed_json",
    ),
    # NUL in the body
    (
        "PUT",
        "/v1/workflows/wf2",
        b'{"definition": {"StartAt": "A", "Comment": "a\\u0000",'
        b' "States": {"A": {"Type": "Pass", "End": true}}}}',
        422,
        "invalid_body",
    ),
    (
        "PUT",
        "/v1/workflows/wf2",
        b'{"definition": {"StartAt": "A\\u0000", "States": {"A\\u0000": {"Type": "Pass", "End": true}}}}',
        422,
        "invalid_body",
    ),
    ("POST", "/v1/workflows/wf/executions", b'{"name": "a\\u0000"}', 422, "invalid_body"),
    ("POST", "/v1/workflows/wf/executions", b'{"name": "a\\n"}', 422, "invalid_body"),
    ("POST", "/v1/executions/{seed}/stop", b'{"error": "E\\u0000"}', 422, "invalid_body"),
    ("POST", "/v1/executions/{seed}/stop", b'{"cause": "\\u0000"}', 422, "invalid_body"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), CASES)
async def test_hostile_input_is_a_4xx_and_changes_nothing(
    client: Client,
    pool: asyncpg.Pool,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    await register(client, "wf")
    seed = await start(client, "wf", input={"seed": 1}, name="seed")
    path = path.replace("{seed}", seed["execution_id"])
    before = await row_counts(pool)

    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": body, "headers": JSON_HEADERS}
    headers = {"Accept": "text/event-stream"} if "/events" in path else {}
    kwargs.setdefault("headers", {}).update(headers)
    resp = await client.request(method, path, **kwargs)

    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == code, problem
    assert problem["detail"]
    assert await row_counts(pool) == before


async def test_a_nul_inside_the_input_is_a_4xx_whatever_the_store_says(
    client: Client, pool: asyncpg.Pool
) -> None:
    """A "\\u0000" escape is valid JSON: whether it is stored is the store's choice;
    the API answers 2xx or a 4xx, never a 500."""
    await register(client, "wf")
    before = await row_counts(pool)

    resp = await client.post(
        "/v1/workflows/wf/executions", data=b'{"input": {"k": "a\\u0000b"}}', headers=JSON_HEADERS
    )

    assert resp.status < 500, await resp.text()
    if resp.status >= 400:
        assert (await resp.json())["code"] == "invalid_request"
        assert await row_counts(pool) == before


@pytest.mark.parametrize("last_event_id", [OVER, HUGE, "-1", "1.5", "\u0661"])
async def test_the_feed_refuses_a_bad_resume_point_before_its_headers(
    client: Client, last_event_id: str
) -> None:
    """The feed of a RUNNING execution: a bad Last-Event-ID is a 400 problem, not a
    200 whose body later holds an error."""
    await register(client, "wf")
    seed = await start(client, "wf", input={}, name="seed")

    resp = await client.get(
        f"/v1/executions/{seed['execution_id']}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": last_event_id},
    )

    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_request"


async def test_the_largest_bounds_are_accepted(client: Client) -> None:
    """The bounds published are the bounds served: DB_INT_MAX itself is valid."""
    await register(client, "wf")
    seed = (await start(client, "wf", input={}, name="seed"))["execution_id"]

    for path, status, code in (
        (f"/v1/workflows/wf?version={DB_INT_MAX}", 404, "workflow_not_found"),
        (f"/v1/executions?version={DB_INT_MAX}", 200, None),
        # Past the last event: the one rule of /state and /state/diff.
        (f"/v1/executions/{seed}/state?seq={DB_INT_MAX}", 400, "invalid_request"),
        (f"/v1/executions/{seed}/state/diff?from=1&to={DB_INT_MAX}", 400, "invalid_request"),
        (f"/v1/executions/{seed}/history?cursor={encode_cursor(DB_INT_MAX)}", 200, None),
    ):
        resp = await client.get(path)
        assert resp.status == status, (path, await resp.text())
        if code is not None:
            assert (await resp.json())["code"] == code


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {}, {"Content-Type": "application/x-www-form-urlencoded"}],
)
async def test_a_body_not_declared_as_json_is_a_415(
    client: Client, pool: asyncpg.Pool, headers: dict[str, str]
) -> None:
    await register(client, "wf")
    before = await row_counts(pool)

    for method, path in (
        ("PUT", "/v1/workflows/wf2"),
        ("POST", "/v1/workflows/wf/executions"),
        ("POST", "/v1/workflows:validate"),
    ):
        resp = await client.request(method, path, data=b'{"definition": {}}', headers=headers)
        assert resp.status == 415, await resp.text()
        assert (await resp.json())["code"] == "unsupported_media_type"
    assert await row_counts(pool) == before


async def test_json_types_and_empty_bodies_are_accepted(client: Client) -> None:
    await register(client, "wf")
    seed = (await start(client, "wf", input={}, name="seed"))["execution_id"]

    resp = await client.post(
        "/v1/workflows/wf/executions",
        data=b'{"name": "second"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/v1/workflows/wf/executions",
        data=b'{"name": "third"}',
        headers={"Content-Type": "application/vnd.steplog+json"},
    )
    assert resp.status == 201, await resp.text()
    # A stop without a body needs no Content-Type.
    resp = await client.post(f"/v1/executions/{seed}/stop")
    assert resp.status == 200, await resp.text()


SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Server": "steplog",
}


async def test_every_response_carries_the_security_headers(client: Client) -> None:
    await register(client, "wf")
    seed = (await start(client, "wf", input={}, name="seed"))["execution_id"]

    for method, path, status in (
        ("GET", "/v1/workflows", 200),
        ("GET", "/v1/executions?limit=0", 400),
        ("GET", "/nowhere", 404),
        ("DELETE", "/v1/workflows/wf", 405),
        ("GET", "/health/live", 200),
        ("GET", f"/v1/executions/{seed}/history.jsonl", 200),
        ("GET", "/v1/openapi.json", 200),
    ):
        resp = await client.request(method, path)
        assert resp.status == status
        for name, value in SECURITY.items():
            assert resp.headers[name] == value, (path, name)
        assert resp.headers["Cache-Control"] == "no-store", path
        assert "Access-Control-Allow-Origin" not in resp.headers  # CORS is off by default
    # The feed keeps its own no-cache, with the rest.
    await client.post(f"/v1/executions/{seed}/stop", json={})
    resp = await client.get(f"/v1/executions/{seed}/events")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert all(resp.headers[name] == value for name, value in SECURITY.items())
    await resp.read()


async def test_cors_is_off_without_an_allow_list(client: Client) -> None:
    resp = await client.options(
        "/v1/workflows",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert resp.status == 405
    assert "Access-Control-Allow-Origin" not in resp.headers
