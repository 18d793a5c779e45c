"""A batch of spans crosses the pipe to the export process (steplog.export_process) and
comes back as records that steplog.otlp encodes (in C and in Python) to the message the
SDK's encoder makes of the spans sent, for every shape of span steplog and a handler
make, SDK spans and lean ones (as the records they end as, and as ReadableSpans),
limits' drop counts included."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState

from steplog import otlp, tracing
from steplog.otlp import encode_spans, lean_grpc_exporter
from steplog.span_export import decode_batch, encode_batch
from steplog.tracing import LeanTracer
from tests.unit.test_otlp import _spans, _workload


@pytest.fixture(autouse=True, params=["C", "Python"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test with the records encoded by steplog._otlp_speedups (where it is built:
    tests/unit/test_otlp_speedups.py checks it is wherever a C compiler is) and by
    steplog.otlp's Python encoding, of spans made in C (steplog._span_speedups) and in
    Python alike."""
    if request.param == "Python":
        monkeypatch.setattr(otlp, "_speedups", None)
        monkeypatch.setattr(tracing, "_speedups", None)


@pytest.mark.parametrize("lean", [False, True], ids=["sdk spans", "lean spans"])
def test_a_batch_crosses_the_pipe_unchanged(lean: bool) -> None:
    spans = _spans(lean)
    assert _sent(spans) == sdk_encode(spans)


class _Records(SpanExporter):
    """Keeps what its batch processor gives it (an exporter that takes records, as
    the export process's does)."""

    takes_records = True

    def __init__(self) -> None:
        self.exported: list[object] = []

    def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
        self.exported.extend(spans)
        return SpanExportResult.SUCCESS


def _records_and_spans() -> tuple[list[object], Sequence[ReadableSpan]]:
    """The workload's lean spans as a batch processor gives them to an exporter that
    takes records (mixed with SDK spans, as a driver's are), and as ReadableSpans."""
    records, memory = _Records(), InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "steplog", "n": 1}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(records))
    _workload(LeanTracer(provider))
    with provider.get_tracer("driver").start_as_current_span("SELECT", kind=SpanKind.CLIENT):
        pass
    provider.shutdown()
    return records.exported, memory.get_finished_spans()


def test_lean_spans_cross_the_pipe_as_the_records_they_end_as() -> None:
    records, spans = _records_and_spans()
    assert [type(r).__name__ for r in records] == ["tuple"] * 9 + ["ReadableSpan"]
    sent = _sent(records)  # type: ignore[arg-type]
    assert sent == sdk_encode(spans)
    # Two groups of spans: steplog's scope and the driver's.
    assert [s.scope.name for s in sent.resource_spans[0].scope_spans] == ["steplog", "driver"]
    # The exporters in the process take them too.
    grpc = lean_grpc_exporter()
    try:
        assert grpc._translate_data(records) == sdk_encode(spans)  # type: ignore[attr-defined]
    finally:
        grpc.shutdown()


def test_trace_state_scopes_resources_and_empty_batches() -> None:
    one, other = Resource({"service.name": "a"}), Resource({"service.name": "b"}, "url")
    scope = InstrumentationScope("handler", "1.0", "schema", {"k": "v"})
    spans = [
        ReadableSpan(
            "stated",
            context=SpanContext(
                2**127 + 5,
                2**63 + 7,
                is_remote=False,
                trace_flags=TraceFlags(1),
                trace_state=TraceState([("k", "v"), ("x", "y")]),
            ),
            parent=SpanContext(2**127 + 5, 9, is_remote=True),
            resource=one,
            kind=SpanKind.SERVER,
            start_time=1,
            end_time=2,
        ),
        ReadableSpan(
            "scoped", context=SpanContext(3, 4, False), resource=other, instrumentation_scope=scope
        ),
        ReadableSpan("unscoped", context=SpanContext(5, 6, False), resource=one),
    ]
    sent = _sent(spans)
    assert sent == sdk_encode(spans)
    assert len(sent.resource_spans) == 2
    assert sent.resource_spans[0].scope_spans[0].spans[0].trace_state == "k=v,x=y"
    assert decode_batch(encode_batch([])) == []


def test_what_a_span_dropped_is_counted_on_the_other_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "1")
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    records = _Records()
    provider.add_span_processor(BatchSpanProcessor(records))
    with LeanTracer(provider).start_as_current_span("s", attributes={"a": 1}) as span:
        span.set_attributes({"b": 2, "c": 3})
        span.add_event("one")
        span.add_event("two")
    provider.shutdown()
    spans = exporter.get_finished_spans()
    for batch in (spans, records.exported):
        sent = _sent(batch)  # type: ignore[arg-type]
        (span,) = sent.resource_spans[0].scope_spans[0].spans
        assert (span.dropped_attributes_count, span.dropped_events_count) == (1, 1)
        assert sent == sdk_encode(spans)


def _sent(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """What the export process sends of ``spans``: through the pipe, then encoded."""
    return ExportTraceServiceRequest.FromString(encode_spans(decode_batch(encode_batch(spans))))
