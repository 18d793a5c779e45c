"""steplog.otlp.encode_spans writes the message the OTLP exporters' own encoder builds,
and steplog.tracing.LeanTracer records what the SDK's tracer records, with its spans in
C (steplog._span_speedups) and in Python."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from engine.loops.tracing import parent_context, start_child
from engine.tracecontext import add_own_event, current_span, set_own_attributes, traceparent_of
from steplog import tracing
from steplog.otlp import encode_spans, lean_grpc_exporter
from steplog.tracing import InsideTraces, LeanTracer

REMOTE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True, params=["C spans", "Python spans"])
def spans_in(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test with the tracers it makes spanning in C (steplog._span_speedups, where it
    is built: tests/unit/test_span_speedups.py checks it is wherever a C compiler is) and
    in Python (steplog.tracing's own LeanSpan and _CurrentSpan)."""
    if request.param == "Python spans":
        monkeypatch.setattr(tracing, "_speedups", None)


def _workload(tracer: trace.Tracer) -> None:
    """Spans of every shape steplog makes, and some a handler could."""
    with tracer.start_as_current_span(
        "POST /v1/workflows/{name}/executions",
        context=parent_context(REMOTE),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/v1/x"},
    ) as request:
        request.set_attribute("http.response.status_code", 201)
        parent = traceparent_of(request)
    with tracer.start_as_current_span(
        "steplog.decide", context=parent_context(parent), kind=SpanKind.CONSUMER
    ) as decision:
        decision.add_event("steplog.append", {"steplog.append.events": 2})
        decision.set_attributes(
            {
                "steplog.decision.states": ["A", "B"],
                "ratio": 0.5,
                "ok": True,
                "negative": -7,
                "big": 2**62,
                "unicode": "déjà vu",
                "ints": (1, 2, 3),
            }
        )
        tracer.start_span("steplog.execution.ExecutionFailed", attributes={"e": "x"}).end()
    # A decision as the engine records one: its own attributes and events.
    with start_child(
        tracer, "steplog.decide", parent, SpanKind.CONSUMER, {"steplog.trigger": "Begin"}
    ) as decision:
        add_own_event(current_span(), "steplog.append", {"steplog.append.events": 2})
        set_own_attributes(
            current_span(), {"steplog.decision.states": ("A", "B"), "steplog.decision.events": 2}
        )
        add_own_event(current_span(), "steplog.execution.ExecutionSucceeded", {"s": "x"}, 7)
    # A task attempt, as the worker starts it from its message's traceparent, with a
    # handler's own span under it.
    with start_child(
        tracer, "steplog.task", parent, SpanKind.CONSUMER, {"steplog.task.attempt": 1}
    ) as attempt:
        attempt.add_event("steplog.relay.publish", {"messaging.message.id": "1-0"}, 5)
        with tracer.start_as_current_span("charge card", attributes={"amount": 10}):
            pass
        attempt.set_attribute("steplog.task.ok", True)
    span = tracer.start_span(
        "steplog.task",
        kind=SpanKind.PRODUCER,
        links=[Link(request.get_span_context(), {"why": "retry"})],
    )
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.record_exception(ValueError("bad input"))
    span.update_name("steplog.task.attempt")
    span.end()
    ok = tracer.start_span("ok", kind=SpanKind.CLIENT)
    ok.set_status(StatusCode.OK)
    ok.set_status(Status(StatusCode.ERROR))  # OK is final
    ok.end()
    with pytest.raises(RuntimeError), tracer.start_as_current_span("raises"):
        raise RuntimeError("inside")


def _spans(lean: bool, sampler: Sampler = ALWAYS_ON) -> Sequence[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=sampler, resource=Resource({"service.name": "steplog", "n": 1})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _workload(LeanTracer(provider) if lean else provider.get_tracer("steplog"))
    provider.shutdown()
    return exporter.get_finished_spans()


@pytest.mark.parametrize("lean", [False, True], ids=["sdk spans", "lean spans"])
def test_the_encoding_is_the_sdk_encoders_message(lean: bool) -> None:
    spans = _spans(lean)
    assert len(spans) == 9
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert ours == sdk_encode(spans)
    assert (
        ours.resource_spans[0].scope_spans[0].spans[1].name == "steplog.execution.ExecutionFailed"
    )


def test_trace_state_and_empty_batches_encode_alike() -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = LeanTracer(provider)
    context = parent_context(REMOTE)
    assert context is not None
    with tracer.start_as_current_span("a", context=context):
        pass
    spans = exporter.get_finished_spans()
    stated = [
        ReadableSpan(
            "b",
            context=SpanContext(1, 2, is_remote=False, trace_state=TraceState([("k", "v")])),
            resource=spans[0].resource,
        )
    ]
    for batch in (spans, stated, []):
        assert ExportTraceServiceRequest.FromString(encode_spans(batch)) == sdk_encode(batch)


def _shape(span: ReadableSpan) -> tuple[object, ...]:
    ctx = span.get_span_context()
    assert ctx is not None
    return (
        span.name,
        span.kind,
        dict(span.attributes or {}),
        [
            (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
            for e in span.events
        ],
        [(link.context.trace_id, dict(link.attributes or {})) for link in span.links],
        span.status.status_code,
        span.status.description,
        span.parent.span_id if span.parent else None,
        ctx.trace_flags,
        ctx.trace_id == int(REMOTE[3:35], 16),
    )


def test_lean_spans_record_what_the_sdks_spans_record() -> None:
    sdk, lean = _spans(lean=False), _spans(lean=True)
    # Ids differ from run to run: compare what each span recorded, and its tree.
    assert [_shape(s)[:7] for s in lean] == [_shape(s)[:7] for s in sdk]
    assert [_shape(s)[8:] for s in lean] == [_shape(s)[8:] for s in sdk]
    ids = {s.get_span_context().span_id for s in lean}  # type: ignore[union-attr]
    assert [s.parent is not None and s.parent.span_id in ids for s in lean] == [
        s.parent is not None and s.parent.span_id in {x.get_span_context().span_id for x in sdk}  # type: ignore[union-attr]
        for s in sdk
    ]


def test_lean_spans_follow_the_sampler() -> None:
    # Parent-based, off for new traces: the spans under the remote parent are recorded.
    lean = _spans(lean=True, sampler=ParentBased(ALWAYS_OFF))
    sdk = _spans(lean=False, sampler=ParentBased(ALWAYS_OFF))
    assert [s.name for s in lean] == [s.name for s in sdk]
    assert [s.name for s in lean] == [
        "POST /v1/workflows/{name}/executions",
        "steplog.execution.ExecutionFailed",
        "steplog.decide",
        "steplog.decide",
        "charge card",
        "steplog.task",
    ]


STATED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


@pytest.mark.parametrize(
    "sampler",
    [
        ALWAYS_ON,
        ALWAYS_OFF,
        StaticSampler(Decision.RECORD_ONLY),
        ParentBased(ALWAYS_ON),
        ParentBased(ALWAYS_OFF),
        InsideTraces(ALWAYS_ON),
        InsideTraces(ParentBased(ALWAYS_ON)),
        InsideTraces(ParentBased(ALWAYS_OFF)),
        ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON),
        TraceIdRatioBased(1.0),
    ],
    ids=lambda s: s.get_description(),
)
def test_lean_spans_decide_as_the_sdks_tracer(sampler: Sampler) -> None:
    # Roots of every kind, children of sampled and unsampled parents, local and remote,
    # with a trace state: each span recorded (or not), flagged and stated alike.
    def spans(lean: bool) -> list[tuple[object, ...]]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = LeanTracer(provider) if lean else provider.get_tracer("steplog")
        stated = TraceContextTextMapPropagator().extract(
            {"traceparent": STATED, "tracestate": "k=v"}
        )
        made = []
        for parent in (None, parent_context(REMOTE), stated):
            for kind in (SpanKind.CLIENT, SpanKind.SERVER, SpanKind.INTERNAL):
                with tracer.start_as_current_span("p", context=parent, kind=kind) as span:
                    made.append(span)
                    made.append(tracer.start_span("c", kind=SpanKind.CLIENT))
                    made[-1].end()
        # As the engine and the worker start a span from a message's traceparent.
        for traceparent in (REMOTE, STATED, ""):
            for kind in (SpanKind.CLIENT, SpanKind.CONSUMER):
                with start_child(tracer, "m", traceparent, kind, {"a": 1}) as span:
                    made.append(span)
                    made.append(tracer.start_span("c", kind=SpanKind.CLIENT))
                    made[-1].end()
        provider.shutdown()
        exported = {s.get_span_context().span_id for s in exporter.get_finished_spans()}  # type: ignore[union-attr]
        return [
            (
                type(s).__name__ != "NonRecordingSpan",
                s.get_span_context().trace_flags,
                s.get_span_context().trace_state,
                s.get_span_context().span_id in exported,
            )
            for s in made
        ]

    assert spans(lean=True) == spans(lean=False)


def test_the_grpc_exporter_sends_the_same_request() -> None:
    spans = _spans(lean=True)
    exporter = lean_grpc_exporter()
    try:
        assert exporter._translate_data(spans) == sdk_encode(spans)  # type: ignore[attr-defined]
    finally:
        exporter.shutdown()


def test_limits_drop_and_count_as_the_sdks_spans_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "1")

    def spans(lean: bool) -> Sequence[ReadableSpan]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ALWAYS_ON)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = LeanTracer(provider) if lean else provider.get_tracer("steplog")
        with tracer.start_as_current_span("a", attributes={"x": 1, "y": 2, "z": 3}) as span:
            span.set_attributes({"w": 4.5, "x": 0})  # x is kept (a key already held)
            span.add_event("e1", {"k": 1})
            span.add_event("e2")
        # steplog's own attributes and events (engine.tracecontext) meet the same limits.
        with start_child(tracer, "b", REMOTE, SpanKind.CONSUMER, {"x": 1}) as span:
            set_own_attributes(span, {"y": 2})
            set_own_attributes(span, {"w": 4.5, "x": 0})
            add_own_event(span, "e1", {"k": 1})
            add_own_event(span, "e2", {})
        with start_child(tracer, "c", REMOTE, SpanKind.CONSUMER, {}) as span:
            set_own_attributes(span, {"x": 1, "y": 2})
            set_own_attributes(span, {"x": 0})  # a key already held moves to the end
        return exporter.get_finished_spans()

    sdk, lean = spans(lean=False), spans(lean=True)
    # The newest are kept: a full span's oldest attribute and event give way.
    for made in (sdk, lean):
        assert [(s.dropped_attributes, s.dropped_events) for s in made] == [
            (3, 1),
            (2, 1),
            (0, 0),
        ]
        assert list((made[0].attributes or {}).items()) == [("w", 4.5), ("x", 0)]
        assert list((made[1].attributes or {}).items()) == [("w", 4.5), ("x", 0)]
        assert list((made[2].attributes or {}).items()) == [("y", 2), ("x", 0)]
        assert [e.name for e in made[0].events] == ["e2"]
        assert [e.name for e in made[1].events] == ["e2"]
    ours = ExportTraceServiceRequest.FromString(encode_spans(lean))
    assert ours == sdk_encode(lean)
    assert [
        (encoded.dropped_attributes_count, encoded.dropped_events_count)
        for encoded in ours.resource_spans[0].scope_spans[0].spans
    ] == [(3, 1), (2, 1), (0, 0)]


def test_cached_attribute_encodings_never_mix_values() -> None:
    # The encoder keeps the bytes of repeated attributes (and of a float's key): equal
    # keys of different values, kinds and lists each encode as themselves.
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = LeanTracer(provider)
    values: list[object] = [1, True, 1.0, 2.5, "1", ["A", "B"], ["A"], ("A", "B"), [1], [True]]
    for value in values * 2:
        tracer.start_span("s", attributes={"v": value}).end()  # type: ignore[dict-item]
    spans = exporter.get_finished_spans()
    for one in range(0, len(spans), 3):
        batch = spans[one : one + 3]
        assert ExportTraceServiceRequest.FromString(encode_spans(batch)) == sdk_encode(batch)


class _Starts(SimpleSpanProcessor):
    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.started: list[str] = []

    def on_start(self, span: trace.Span, parent_context: object = None) -> None:  # type: ignore[override]
        self.started.append(span.name)  # type: ignore[attr-defined]


def test_processors_added_later_and_their_starts_are_called() -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    tracer = LeanTracer(provider)
    tracer.start_span("before").end()  # no processor yet: nothing to call
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    starts = _Starts(second)
    provider.add_span_processor(SimpleSpanProcessor(first))
    provider.add_span_processor(starts)
    with tracer.start_as_current_span("after"):
        tracer.start_span("child").end()
    assert [s.name for s in first.get_finished_spans()] == ["child", "after"]
    assert [s.name for s in second.get_finished_spans()] == ["child", "after"]
    assert starts.started == ["after", "child"]


@pytest.mark.parametrize(
    "traceparent",
    [
        REMOTE,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled
        REMOTE.upper(),  # W3C hex is lower case: ignored
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # invalid ids
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c8031_c-b7ad6b7169203331-01",  # int() would take "_"
        "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # a later version
        "garbage",
    ],
)
def test_a_messages_parent_is_what_the_w3c_propagator_reads(traceparent: str) -> None:
    """`parent_context` reads steplog's own traceparents without the propagator, and
    must read every string as the propagator does (a message is data from Redis)."""
    ours = parent_context(traceparent)
    again = parent_context(traceparent)  # (from its cache, for a valid one)
    theirs = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    assert ours is not None
    for context in (ours, again):
        assert trace.get_current_span(context).get_span_context() == (
            trace.get_current_span(theirs).get_span_context()
        )
    # A span the engine starts from it (steplog's tracer does not parse what it
    # writes) has the parent, trace and flags the SDK's tracer gives it.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with start_child(LeanTracer(provider), "lean", traceparent, SpanKind.CONSUMER, {}) as lean:
        pass
    with provider.get_tracer("sdk").start_as_current_span("sdk", context=theirs) as sdk:
        pass
    parent = trace.get_current_span(theirs).get_span_context()
    if parent.is_valid:  # (else each begins a trace of its own)
        assert lean.get_span_context().trace_id == sdk.get_span_context().trace_id
    assert lean.get_span_context().trace_flags == sdk.get_span_context().trace_flags
    exported = exporter.get_finished_spans()
    # (the default sampler: a new trace is sampled, a child when its parent is)
    sampled = not parent.is_valid or parent.trace_flags.sampled
    assert [s.name for s in exported] == (["lean", "sdk"] if sampled else [])
    if exported:
        assert exported[0].parent == exported[1].parent


def test_the_current_span_is_what_the_api_says_it_is() -> None:
    # engine.tracecontext.current_span reads OpenTelemetry's contextvar directly: it
    # must agree with get_current_span for steplog's spans, the SDK's, a remote
    # parent's and none at all, and must not take a value that is not a Span for one.
    from opentelemetry import context as context_api
    from opentelemetry.trace.propagation import _SPAN_KEY

    from engine.tracecontext import current_span

    provider = TracerProvider()
    assert current_span() is trace.get_current_span() is trace.INVALID_SPAN
    with LeanTracer(provider).start_as_current_span("lean") as lean:
        assert current_span() is trace.get_current_span() is lean
        with provider.get_tracer("sdk").start_as_current_span("sdk") as sdk:
            assert current_span() is trace.get_current_span() is sdk
        assert current_span() is lean
    remote = parent_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert remote is not None
    token = context_api.attach(remote)
    try:
        assert current_span() is trace.get_current_span()
        assert traceparent_of(current_span()).startswith("00-0af7651916cd43dd8448eb211c80319c")
    finally:
        context_api.detach(token)
    token = context_api.attach(context_api.set_value(_SPAN_KEY, "not a span"))
    try:
        assert current_span() is trace.get_current_span() is trace.INVALID_SPAN
    finally:
        context_api.detach(token)


def test_a_span_of_invalid_ids_has_no_traceparent() -> None:
    # An id generator's zero makes a span that is not valid: no traceparent to send
    # on (as `traceparent_of` says of the SDK's span), however it was started.
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class Zeros(IdGenerator):
        def generate_span_id(self) -> int:
            return 0

        def generate_trace_id(self) -> int:
            return 0

    provider = TracerProvider(id_generator=Zeros())
    for tracer in (LeanTracer(provider), provider.get_tracer("sdk")):
        with tracer.start_as_current_span("root") as span:
            assert traceparent_of(span) == ""
        with start_child(tracer, "child", REMOTE, SpanKind.CONSUMER, {}) as span:
            assert traceparent_of(span) == ""


def test_a_childs_context_and_error_are_as_start_as_current_spans() -> None:
    # A decision or a task attempt (start_child) from steplog's tracer, as from the
    # SDK's start_as_current_span: current inside, the context before it restored
    # after, an exception recorded and the span failed, a cancellation (a
    # BaseException) not recorded.
    import asyncio

    def spans(lean: bool) -> list[tuple[object, ...]]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = LeanTracer(provider) if lean else provider.get_tracer("steplog")
        before = current_span()
        for error in (None, RuntimeError("boom"), asyncio.CancelledError()):
            try:
                with start_child(tracer, "m", REMOTE, SpanKind.CONSUMER, {"a": 1}) as span:
                    assert current_span() is span
                    if error is not None:
                        raise error
            except BaseException as caught:
                assert caught is error
            assert current_span() is before
        return [
            (
                s.name,
                s.status.status_code,
                s.status.description,
                [e.name for e in s.events],
                [(e.attributes or {}).get("exception.type") for e in s.events],
            )
            for s in exporter.get_finished_spans()
        ]

    assert spans(lean=True) == spans(lean=False)
