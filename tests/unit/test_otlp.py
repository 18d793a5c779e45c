"""steplog.otlp writes exactly the bytes of the OpenTelemetry SDK's OTLP encoder, for
every shape of span (kinds, parents, trace state, every attribute type, events, links,
statuses, dropped counts, several resources and scopes), and the OTLP exporters send
them: over HTTP to a real local receiver, over gRPC as the request message."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from steplog.otlp import encode_spans, grpc_span_exporter, use_fast_encoding

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "value"), ("other", "x=y")]),
)


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    providers = [
        TracerProvider(resource=Resource({"service.name": "steplog", "n": 1})),
        TracerProvider(
            resource=Resource({"service.name": "other", "list": ("a", "b")}, "https://schema/1"),
            span_limits=SpanLimits(max_span_attributes=2, max_events=1, max_links=1),
        ),
    ]
    for provider in providers:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracers = [
        providers[0].get_tracer("steplog"),
        providers[0].get_tracer("lib", "1.2.3", "https://schema/2", {"scope.attr": True}),
        providers[1].get_tracer("steplog"),
    ]
    remote = set_span_in_context(NonRecordingSpan(REMOTE))
    values: dict[str, AttributeValue] = {
        "str": "text",
        "empty": "",
        "unicode": "Zürich ✓ 東京",
        "long": "x" * 300,
        "true": True,
        "false": False,
        "zero": 0,
        "int": 42,
        "big": 2**62,
        "negative": -7,
        "float": 1.5,
        "negative float": -0.0,
        "strings": ["a", "", "ü"],
        "ints": [1, -2, 3],
        "floats": [0.5, 2.0],
        "bools": [True, False],
        "no items": [],
        "too big": 2**70,  # the SDK's encoder logs and leaves it out; so does steplog's
    }
    for i, tracer in enumerate(tracers):
        for kind in SpanKind:
            with tracer.start_as_current_span(
                f"span {kind.name} {i}", context=remote if i == 0 else None, kind=kind
            ) as outer:
                with tracer.start_as_current_span(
                    "", attributes=values, links=[Link(REMOTE, {"why": "because"})]
                ) as inner:
                    inner.add_event("event", {"n": 1, "names": ["x"]})
                    inner.add_event("bare")
                    inner.set_status(Status(StatusCode.ERROR, "it failed: ✗"))
                local = Link(inner.get_span_context())
                tracer.start_span("linked", links=[local, Link(REMOTE)]).end()
                outer.set_status(Status(StatusCode.OK))
            tracer.start_span("root, error without text").end()
            span = tracer.start_span("ended with an error")
            span.set_status(StatusCode.ERROR)
            span.end()
    spans = list(exporter.get_finished_spans())
    for provider in providers:
        provider.shutdown()
    return spans


@pytest.fixture(scope="module")
def spans() -> list[ReadableSpan]:
    return _spans()


def test_every_shape_of_span_encodes_to_the_sdk_encoders_bytes(spans: list[ReadableSpan]) -> None:
    assert len(spans) > 50
    assert any(s.dropped_attributes for s in spans)
    assert any(s.dropped_events for s in spans)
    assert any(s.dropped_links for s in spans)
    assert any(s.context.trace_state for s in spans)
    assert any(s.events and s.links and s.status.description for s in spans)
    assert any(s.attributes and "too big" in s.attributes for s in spans)
    assert any(s.parent is not None and s.parent.is_remote for s in spans)
    for span in spans:  # one by one: a difference names its span
        assert encode_spans([span]) == sdk_encode([span]).SerializePartialToString(), span.name
    whole = encode_spans(spans)
    assert whole == sdk_encode(spans).SerializePartialToString()
    request = ExportTraceServiceRequest.FromString(whole)
    assert len(request.resource_spans) == 2
    assert sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans) == len(spans)
    assert encode_spans([]) == sdk_encode([]).SerializePartialToString() == b""


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.bodies = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", _Receiver.bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_http_exporter_sends_steplogs_encoding(
    spans: Sequence[ReadableSpan], receiver: tuple[str, list[bytes]]
) -> None:
    url, bodies = receiver
    assert use_fast_encoding()
    exporter = OTLPSpanExporter(endpoint=url)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    assert bodies == [sdk_encode(spans).SerializePartialToString()]


def test_the_grpc_exporter_sends_the_sdk_encoders_request(spans: Sequence[ReadableSpan]) -> None:
    exporter = grpc_span_exporter()
    try:
        request = exporter._translate_data(spans)  # type: ignore[attr-defined]
    finally:
        exporter.shutdown()
    assert request == sdk_encode(spans)
