"""One trace per execution (issue 11): a whole steplog (every role) with the SDK's
in-memory exporter runs an execution with a task that fails once and is retried, and a
Wait; every span it makes belongs to the trace of the request that started it, in one
tree: request -> decision (its append an event of it) -> task attempt (its publish an
event of it) -> decision ..., timers firing, and the terminal event. Also: the start's
response names the trace (traceparent), ExecutionStarted records it, logs carry trace
and span ids, and the settings read the standard OTEL_* variables."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import aiohttp
import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode

from engine.adapters.store import StoredEvent
from engine.core import events as ev
from engine.loops.recovery import pending_work
from engine.loops.worker import HandlerRegistry, TaskContext, TaskFailure, default_registry
from engine.messages import Begin
from steplog.app import open_resources, run_roles
from steplog.logs import ContextFilter, JsonFormatter, TextFormatter, configure_logging
from steplog.settings import Settings
from steplog.tracing import InsideTraces, tracer_provider
from tests.conftest import Eventually
from tests.serving import free_port

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"

DEFINITION = {
    "StartAt": "Work",
    "States": {
        "Work": {
            "Type": "Task",
            "Resource": "test:flaky",
            "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "MaxAttempts": 2}],
            "Next": "Pause",
        },
        "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Done"},
        "Done": {"Type": "Succeed"},
    },
}


def flaky_registry() -> HandlerRegistry:
    """test:flaky fails its first attempt; the retry does its work in a span of its own."""
    registry = default_registry()

    def flaky(value: Any, ctx: TaskContext) -> Any:
        if ctx.attempt == 0:
            raise TaskFailure("Flaky", "the first attempt fails")
        with ctx.span("flaky.work", {"flaky.attempt": ctx.attempt}):
            return value

    registry.register("test:flaky", flaky)
    return registry


@contextlib.asynccontextmanager
async def traced_steplog(
    settings: Settings, provider: TracerProvider
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    settings = msgspec.structs.replace(settings, port=free_port())
    assert settings.database_url and settings.redis_url
    stop, ready = asyncio.Event(), asyncio.Event()
    async with open_resources(
        settings, settings.database_url, settings.redis_url, tracer_provider=provider
    ) as r:
        task = asyncio.create_task(run_roles(r, stop, registry=flaky_registry(), ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        # Recovery rebuilds the fresh Redis at start: let it finish first, so that it does
        # not add the work of the execution under test a second time.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            if await r.bus.is_intact():
                break
            assert asyncio.get_running_loop().time() < deadline, "recovery did not finish"
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as http:
            try:
                yield f"http://{settings.host}:{settings.port}", http
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)


def _hex_span(span: ReadableSpan) -> str:
    return f"{span.context.span_id:016x}"


async def test_one_execution_is_one_trace_across_every_role(
    settings: Settings, eventually: Eventually, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("json", "INFO")
    try:
        async with traced_steplog(settings, provider) as (base, http):
            resp = await http.put(f"{base}/v1/workflows/traced", json={"definition": DEFINITION})
            assert resp.status == 201, await resp.text()
            resp = await http.post(
                f"{base}/v1/workflows/traced/executions",
                json={"input": {"n": 1}},
                headers={"traceparent": CLIENT_TRACEPARENT},
            )
            assert resp.status == 201, await resp.text()
            execution_id = (await resp.json())["execution_id"]
            response_traceparent = resp.headers["traceparent"]

            async def finished() -> list[ReadableSpan]:
                # The decision that ended the execution has ended (with its terminal event).
                spans = list(exporter.get_finished_spans())
                return spans if any(_ended(s) for s in spans) else []

            await eventually(finished, timeout_s=30)

            async def history_started() -> Any:
                status_, body = await _get(http, f"{base}/v1/executions/{execution_id}/history")
                return body if status_ == 200 else None

            history = await eventually(history_started)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    provider.shutdown()

    # Only the API's other requests (the registration, the history) are in other traces.
    spans = [
        s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == CLIENT_TRACE
    ]
    by_id = {s.context.span_id: s for s in spans}

    # The request continued the client's trace; its span is named in the response and
    # recorded in ExecutionStarted.
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
    assert request.name == "POST /v1/workflows/{name}/executions"
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE
    assert request.parent is not None and f"{request.parent.span_id:016x}" == CLIENT_SPAN
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    assert response_traceparent == f"00-{CLIENT_TRACE}-{_hex_span(request)}-01"
    started = history["events"][0]
    assert started["type"] == "ExecutionStarted"
    assert started["details"]["traceContext"] == response_traceparent

    with capsys.disabled():  # shown with -s, e.g. for docs/observability.md
        print("\n" + _tree(spans, request))
    # One trace, one tree: every span's parent is a span of it (or the client's).
    assert {f"{s.context.trace_id:032x}" for s in spans} == {CLIENT_TRACE}
    for span in spans:
        assert span.parent is not None, span.name
        assert span.parent.span_id in by_id or span is request, span.name

    def named(name: str) -> list[ReadableSpan]:
        return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None
        return by_id[span.parent.span_id]

    def attr(span: ReadableSpan, key: str) -> Any:
        assert span.attributes is not None
        return span.attributes.get(key)

    # The relay makes no span: the messages it publishes carry the execution's recorded
    # context, and each span that receives one records its publish as an event.
    assert not named("steplog.relay.publish")
    # Two task attempts (the retry is a span of its own), each under the request, its
    # publish an event of it; the first failed, the second holds the handler's own span.
    attempts = named("steplog.task")
    assert [attr(a, "steplog.task.attempt") for a in attempts] == [0, 1]
    assert all(parent(a) is request for a in attempts)
    for attempt in attempts:
        (published,) = [e for e in attempt.events if e.name == "steplog.relay.publish"]
        assert published.attributes is not None
        entry_id = str(published.attributes["messaging.message.id"])
        assert published.timestamp == int(entry_id.split("-")[0]) * 1_000_000
        # (Redis's clock and this one are the same; the entry id has milliseconds)
        assert attempt.start_time is not None
        assert published.timestamp <= attempt.start_time + 1_000_000
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert attr(attempts[0], "steplog.task.error") == "Flaky"
    assert attr(attempts[1], "steplog.task.ok") is True
    (work,) = named("flaky.work")
    assert parent(work) is attempts[1]
    # Two timers fired (the retry's back-off and the Wait), under the recorded context.
    timers = named("steplog.timer.fire")
    assert len(timers) == 2 and all(parent(t) is request for t in timers)
    # Each decision is the child of what caused it: the request (for a Begin), an
    # attempt, a timer; it says which states it moved through and how many events it made.
    # A trigger delivered twice (recovery re-adding a Begin beside the relay's, as the
    # test's fresh Redis makes recovery run at start) is an ignored decision of its own:
    # in the tree, with no events.
    ignored = [d for d in named("steplog.decide") if attr(d, "steplog.decision.ignored")]
    assert all(attr(d, "steplog.decision.events") == 0 for d in ignored)
    decisions = [d for d in named("steplog.decide") if d not in ignored]
    triggers = [(attr(d, "steplog.trigger"), parent(d).name) for d in decisions]
    # The first steps were decided with the start, inside the request, or on a Begin the
    # relay (or recovery) published: under the request either way, a Begin's publish an
    # event of its decision.
    assert triggers[0] == ("Begin", request.name)
    first_events = [e.name for e in decisions[0].events]
    if decisions[0].kind == SpanKind.CONSUMER:
        assert first_events[0] == "steplog.relay.publish"
    else:
        assert "steplog.relay.publish" not in first_events
    begun = [d for d in named("steplog.decide") if d.kind == SpanKind.CONSUMER]
    assert all(
        [e.name for e in d.events][:1] == ["steplog.relay.publish"]
        for d in begun
        if attr(d, "steplog.trigger") == "Begin"
    )
    assert triggers[1:] == [
        ("TaskResult", "steplog.task"),
        ("TimerFired", "steplog.timer.fire"),
        ("TaskResult", "steplog.task"),
        ("TimerFired", "steplog.timer.fire"),
    ]
    assert [parent(d) for d in decisions if parent(d).name == "steplog.task"] == attempts
    assert [parent(d) for d in decisions if parent(d).name == "steplog.timer.fire"] == timers
    assert list(attr(decisions[0], "steplog.decision.states")) == ["Work"]
    assert list(attr(decisions[3], "steplog.decision.states")) == ["Work", "Pause"]
    assert list(attr(decisions[4], "steplog.decision.states")) == ["Pause", "Done"]
    assert sum(attr(d, "steplog.decision.events") for d in decisions) == len(history["events"]) - 1
    # Each decision that changed something appended once, inside it: an event of its span
    # (not a span of its own), at the expected seq, with the decision's events.
    assert not named("steplog.append")
    seq = 1
    for decision in decisions:
        (append,) = [e for e in decision.events if e.name == "steplog.append"]
        assert append.attributes is not None
        assert append.attributes["steplog.append.expected_seq"] == seq
        assert append.attributes["steplog.append.events"] == attr(
            decision, "steplog.decision.events"
        )
        duration = append.attributes["steplog.append.duration_ms"]
        assert isinstance(duration, float) and duration >= 0
        assert decision.start_time is not None and decision.end_time is not None
        assert decision.start_time <= append.timestamp <= decision.end_time
        seq += int(attr(decision, "steplog.decision.events"))
    assert seq == len(history["events"])
    assert not any(e.name == "steplog.append" for d in ignored for e in d.events)
    # The terminal event closes the trace: an event of the last decision.
    assert [d for d in decisions if _ended(d)] == [decisions[-1]]
    (end,) = [e for e in decisions[-1].events if e.name.startswith("steplog.execution.")]
    assert end.name == "steplog.execution.ExecutionSucceeded"
    assert end.attributes is not None
    assert end.attributes["steplog.execution.status"] == "SUCCEEDED"
    assert attr(decisions[-1], "steplog.execution.status") == "SUCCEEDED"

    # The logs of the request and of the worker's failed attempt carry the ids.
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    access = [
        d
        for d in lines
        if d["logger"] == "steplog.api.access" and d.get("execution_id") == execution_id
    ]
    assert access and access[0]["trace_id"] == CLIENT_TRACE
    assert access[0]["span_id"] == _hex_span(request)


_SHOWN = (
    "steplog.trigger",
    "steplog.decision.states",
    "steplog.decision.events",
    "steplog.decision.ignored",
    "steplog.task.attempt",
    "steplog.task.ok",
    "steplog.task.error",
    "steplog.timer.id",
    "steplog.execution.status",
)


def _tree(spans: list[ReadableSpan], root: ReadableSpan) -> str:
    """The spans under ``root`` as an indented tree, children by start time, with the
    attributes that tell them apart and their events."""
    children: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    lines: list[str] = []

    def show(span: ReadableSpan, depth: int) -> None:
        attributes = span.attributes or {}
        shown = " ".join(
            f"{k.rsplit('.', 1)[-1]}={list(v) if isinstance(v, tuple) else v}"
            for k, v in attributes.items()
            if k in _SHOWN
        )
        status = " ERROR" if span.status.status_code == StatusCode.ERROR else ""
        lines.append(f"{'  ' * depth}{span.name}{status}  {shown}".rstrip())
        for event in span.events:
            details = " ".join(
                f"{k.rsplit('.', 1)[-1]}={v!s}"
                for k, v in (event.attributes or {}).items()
                if "duration" not in k
            )
            lines.append(f"{'  ' * (depth + 1)}· {event.name}  {details}".rstrip())
        for child in sorted(
            children.get(span.context.span_id, []), key=lambda c: c.start_time or 0
        ):
            show(child, depth + 1)

    show(root, 0)
    return "\n".join(lines)


def _ended(span: ReadableSpan) -> bool:
    """Whether ``span`` is the decision that ended its execution successfully."""
    return any(e.name == "steplog.execution.ExecutionSucceeded" for e in span.events)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert tracer_provider(Settings()) is None
    assert tracer_provider(Settings.from_env({"OTEL_TRACES_EXPORTER": "none"})) is None
    on = Settings.from_env(
        {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert on.otel_traces_exporter == ("otlp", "console")
    assert on.otel_exporter_otlp_protocol == "grpc"
    disabled = Settings.from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert tracer_provider(disabled) is None
    specific = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        }
    )
    assert specific.otel_exporter_otlp_protocol == "http/protobuf"
    assert not specific.trace_drivers
    assert Settings.from_env({"STEPLOG_TRACE_DRIVERS": "true"}).trace_drivers
    with pytest.raises(ValueError, match="STEPLOG_TRACE_DRIVERS"):
        Settings.from_env({"STEPLOG_TRACE_DRIVERS": "maybe"})
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        Settings.from_env({"OTEL_TRACES_EXPORTER": "jaeger"})
    with pytest.raises(ValueError, match="OTLP protocol"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    for protocol in ("http/protobuf", "grpc"):
        provider = tracer_provider(
            Settings(otel_traces_exporter=("otlp",), otel_exporter_otlp_protocol=protocol)
        )
        assert provider is not None
        assert provider.sampler.get_description().startswith("InsideTraces{")
        provider.shutdown()


def test_driver_spans_only_appear_inside_a_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=InsideTraces(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    tracer.start_span("idle poll", kind=SpanKind.CLIENT).end()  # a trace of its own: dropped
    with tracer.start_as_current_span("decision"):
        tracer.start_span("query", kind=SpanKind.CLIENT).end()
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["decision", "query"]
    provider.shutdown()


def test_started_events_keep_their_trace_context_and_older_ones_have_none() -> None:
    traced = ev.ExecutionStarted(workflow="w", trace_context=CLIENT_TRACEPARENT)
    assert ev.decode_event(ev.encode_event(traced)) == traced
    old = ev.decode_event(b'{"type":"ExecutionStarted","workflow":"w"}')
    assert isinstance(old, ev.ExecutionStarted) and old.trace_context == ""
    assert b"traceContext" not in ev.encode_event(ev.ExecutionStarted(workflow="w"))


def test_log_lines_carry_the_current_span_in_json_and_text() -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    tracer = provider.get_tracer("test")
    inside = logging.LogRecord("steplog.test", logging.INFO, __file__, 1, "inside", None, None)
    outside = logging.LogRecord("steplog.test", logging.INFO, __file__, 1, "outside", None, None)
    with tracer.start_as_current_span("work") as span:
        ContextFilter().filter(inside)
    ContextFilter().filter(outside)
    ctx = span.get_span_context()
    trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    doc = json.loads(JsonFormatter().format(inside))
    assert (doc["trace_id"], doc["span_id"]) == (trace_id, span_id)
    assert f"[trace={trace_id} span={span_id}] inside" in TextFormatter().format(inside)
    assert "trace_id" not in json.loads(JsonFormatter().format(outside))
    assert "trace=" not in TextFormatter().format(outside)
    provider.shutdown()


def test_a_handler_span_records_nothing_with_tracing_off() -> None:
    ctx = TaskContext(execution_id="e", state="S", attempt=0, task_id="t")
    with ctx.span("own work", {"n": 1}) as span:
        assert not span.is_recording()
        assert not span.get_span_context().is_valid


def test_recovery_republishes_work_under_the_recorded_trace_context() -> None:
    execution_id = uuid4()
    started = ev.ExecutionStarted(workflow="w", trace_context=CLIENT_TRACEPARENT)
    stored = StoredEvent(
        execution_id,
        1,
        1,
        "ExecutionStarted",
        ev.encode_event(started),
        dt.datetime.now(dt.UTC),
        tx_id=1,
    )
    triggers, tasks = pending_work([stored])
    assert triggers == [(execution_id, Begin(traceparent=CLIENT_TRACEPARENT))]
    assert tasks == []
