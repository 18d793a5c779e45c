"""The read side through the whole stack (API, PostgreSQL, relay, Redis, engine,
worker, projectors): the live SSE feed, `steplog verify` and `steplog export`."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import msgspec
import pytest

from engine.core import events as ev
from engine.core.asl.model import Definition
from engine.core.decide import Decision, decide
from engine.core.state import ExecutionState
from engine.core.triggers import Trigger
from steplog import audit
from steplog.settings import Settings
from tests.serving import Running, running_steplog

# Every kind of decision: Begin, task results, Parallel and Map interleavings, a
# Wait timer, a failed task retried after a timer, then caught.
AUDITED: dict[str, Any] = {
    "StartAt": "Check",
    "States": {
        "Check": {"Type": "Task", "Resource": "test:echo", "ResultPath": "$.check", "Next": "Both"},
        "Both": {
            "Type": "Parallel",
            "Branches": [
                {
                    "StartAt": "L",
                    "States": {"L": {"Type": "Task", "Resource": "test:echo", "End": True}},
                },
                {"StartAt": "R", "States": {"R": {"Type": "Pass", "Result": "r", "End": True}}},
            ],
            "ResultPath": "$.both",
            "Next": "Each",
        },
        "Each": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemProcessor": {
                "StartAt": "Item",
                "States": {"Item": {"Type": "Task", "Resource": "test:echo", "End": True}},
            },
            "ResultPath": "$.each",
            "Next": "Pause",
        },
        "Pause": {"Type": "Wait", "Seconds": 0, "Next": "Flaky"},
        "Flaky": {
            "Type": "Task",
            "Resource": "test:fail",
            "Parameters": {"error": "Flaky"},
            "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "MaxAttempts": 1}],
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Done"}],
            "Next": "Done",
        },
        "Done": {"Type": "Pass", "Result": "done", "ResultPath": "$.done", "End": True},
    },
}
SLEEPER: dict[str, Any] = {
    "StartAt": "Sleep",
    "States": {"Sleep": {"Type": "Task", "Resource": "test:sleep", "End": True}},
}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        for name, definition in (("audited", AUDITED), ("sleeper", SLEEPER)):
            await running.register(name, definition)
        yield running


class Message(msgspec.Struct):
    id: int
    event: str
    data: Any


async def _messages(resp: aiohttp.ClientResponse, count: int | None = None) -> list[Message]:
    """SSE messages until ``count`` of them, or the end of the stream."""
    out: list[Message] = []
    fields: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "id" in fields:
            out.append(Message(int(fields["id"]), fields["event"], json.loads(fields["data"])))
            if count is not None and len(out) == count:
                return out
        fields = {}
    return out


SSE = {"Accept": "text/event-stream"}


async def test_the_feed_sends_history_then_live_events_and_resumes(
    app: Running, eventually: Any
) -> None:
    eid = await app.start_id("sleeper", {"seconds": 1})
    url = f"{app.base_url}/v1/executions/{eid}/events"

    async with app.http.get(url, headers=SSE) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await _messages(resp, 2)
    # A reconnect after the second event: the feed resumes at the third.
    async with app.http.get(url, headers={**SSE, "Last-Event-ID": str(first[-1].id)}) as resp:
        rest = await _messages(resp)  # returns when the server ends the stream

    seen = first + rest
    assert [m.id for m in seen] == list(range(1, len(seen) + 1))
    assert seen[0].event == "ExecutionStarted" and seen[-1].event == "ExecutionSucceeded"
    assert "TaskSucceeded" in [m.event for m in rest]  # arrived live, a second later
    assert all(m.data["seq"] == m.id and m.data["type"] == m.event for m in seen)
    # ?after= does the same as Last-Event-ID; past the end, the stream is empty.
    async with app.http.get(url, params={"after": str(len(seen) - 1)}, headers=SSE) as resp:
        assert [m.id for m in await _messages(resp)] == [len(seen)]
    async with app.http.get(url, headers={**SSE, "Last-Event-ID": str(len(seen))}) as resp:
        assert await _messages(resp) == []


async def test_the_feed_refuses_bad_requests(app: Running) -> None:
    eid = await app.start_id("sleeper", {"seconds": 0})
    url = f"{app.base_url}/v1/executions/{eid}/events"
    cases = [
        (url, {**SSE, "Last-Event-ID": "x"}, 400, "invalid_request"),
        (url + "?after=-1", SSE, 400, "invalid_request"),
        (url, {"Accept": "application/json"}, 406, "not_acceptable"),
        (
            f"{app.base_url}/v1/executions/{'0' * 8}-0000-0000-0000-{'0' * 12}/events",
            SSE,
            404,
            "execution_not_found",
        ),
    ]
    for target, headers, status, code in cases:
        async with app.http.get(target, headers=headers) as resp:
            assert (resp.status, (await resp.json(content_type=None))["code"]) == (status, code)


def _changed_decide(definition: Definition, state: ExecutionState, trigger: Trigger) -> Decision:
    """decide with a deliberate change: Pass states output something else."""
    decision = decide(definition, state, trigger)
    decision.events = [
        msgspec.structs.replace(e, output={"changed": True})
        if isinstance(e, ev.PassStateExited)
        else e
        for e in decision.events
    ]
    return decision


async def test_verify_passes_recorded_histories_and_flags_a_changed_decide(
    app: Running, eventually: Any
) -> None:
    audited = [await app.start_id("audited", {"items": list(range(n)), "n": n}) for n in (0, 2, 3)]
    stopped = await app.start_id("sleeper", {"seconds": 2})
    for eid in audited:
        assert (await app.ended(eventually, eid))["status"] == "SUCCEEDED"
    async with app.http.post(f"{app.base_url}/v1/executions/{stopped}/stop", json={}) as resp:
        assert resp.status == 200

    out = io.StringIO()
    report = await audit.verify(app.resources, out)
    assert (report.checked, report.differ, report.exit_code) == (4, [], 0), out.getvalue()
    assert out.getvalue().endswith("verified 4 executions: 0 differ under this engine\n")

    out = io.StringIO()
    report = await audit.verify(app.resources, out, decide_fn=_changed_decide)
    assert sorted(report.differ) == sorted(audited) and report.exit_code == 1
    lines = out.getvalue().splitlines()
    assert all("PassStateExited" in line for line in lines[:-1]) and len(lines) == 4

    out = io.StringIO()
    only = await audit.verify(app.resources, out, workflow="sleeper", limit=5)
    assert (only.checked, only.differ) == (1, [])


async def test_export_writes_the_history_as_json_lines(app: Running, eventually: Any) -> None:
    eid = await app.start_id("audited", {"items": [1]})
    await app.ended(eventually, eid)
    out = io.StringIO()

    assert await audit.export(app.resources, UUID(eid), out) == 0
    assert await audit.export(app.resources, uuid4(), io.StringIO()) == 1

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    async with app.http.get(f"{app.base_url}/v1/executions/{eid}/history.jsonl") as resp:
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        over_http = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert lines == over_http
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert {e["execution_id"] for e in lines} == {eid}
    assert lines[-1]["type"] == "ExecutionSucceeded"


async def test_stats_and_listing_follow_the_running_projectors(
    app: Running, eventually: Any
) -> None:
    for n in (1, 2):
        await app.ended(eventually, await app.start_id("audited", {"items": list(range(n))}))

    async def stats() -> Any:
        async with app.http.get(f"{app.base_url}/v1/workflows/audited/stats") as resp:
            body = await resp.json()
        # Two projections, each at its own pace: wait for both to see the ends.
        done = [s for s in body["states"] if s["name"] == "Done" and s["succeeded"] == 2]
        return body if body["executions"]["by_status"]["SUCCEEDED"] == 2 and done else None

    body = await eventually(stats, timeout_s=10)
    states = {s["name"]: s for s in body["states"]}
    assert states["Flaky"]["entered"] == 2 and states["Flaky"]["retried"] == 2
    assert states["Flaky"]["failed"] == 2  # failed twice each, then caught
    assert states["Item"]["entered"] == 3 and states["Item"]["succeeded"] == 3
    assert states["Check"]["duration_ms"]["p50"] is not None
    assert body["executions"]["duration_ms"]["p99"] >= 1000  # the retry waits a second
