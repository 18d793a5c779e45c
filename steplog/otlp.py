"""OTLP protobuf encoding of finished spans, written directly as protobuf wire bytes.

The OTLP exporters (opentelemetry-exporter-otlp-proto-http, -grpc) encode each batch
with `opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`, which builds
a protobuf message object per span, attribute, value, event and status: about 45 µs per
steplog span on a loaded 2-core machine, more than the SDK spends making the span, in
the exporter's thread of the same process (bench/tracing.py). `encode_spans` here writes
the same bytes (ExportTraceServiceRequest; tests/unit/test_otlp.py checks them against
the SDK's encoder, span by span shape) in a fraction of that; `use_fast_encoding` makes
the exporters use it:

- OTLP over HTTP: the exporter module's ``encode_spans`` is replaced (the exporter calls
  ``encode_spans(spans).SerializePartialToString()``; what it gets answers that with
  these bytes). Process-wide, for that exporter module only; transport, retries,
  headers, compression and its own metrics stay the SDK's.
- OTLP over gRPC: `FastGrpcSpanExporter` parses these bytes into the request message
  (upb, in C) instead of building it field by field.

The encoding follows opentelemetry/proto/trace/v1/trace.proto and common.proto, field by
field as the SDK's encoder fills them: proto3 defaults omitted, the status always
present, ``flags`` with the HAS_IS_REMOTE bit (and IS_REMOTE for a remote parent).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

log = logging.getLogger(__name__)

_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)  # Span.flags, fixed32 16
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_LINK_FLAGS_LOCAL = b"\x35" + struct.pack("<I", _HAS_IS_REMOTE)  # Link.flags, fixed32 6
_LINK_FLAGS_REMOTE = b"\x35" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_U64 = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack


_SMALL = [bytes((i,)) for i in range(0x80)]  # the one-byte varints


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the payload's length, the payload."""
    size = len(payload)
    return tag + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode())


# KeyValue's key field of each attribute name seen (names are few and repeat).
_keys: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    encoded = _keys.get(name)
    if encoded is None:
        encoded = _string(b"\x0a", name)
        if len(_keys) < 4096:
            _keys[name] = encoded
    return encoded


def _any_value(value: Any) -> bytes:
    """An AnyValue's fields (every member of its oneof is written, default or not)."""
    if isinstance(value, str):  # the commonest, first
        return _string(b"\x0a", value)
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _string(b"\x0a", value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value & _U64)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(b"\x32", _attributes(b"\x0a", {str(k): v for k, v in value.items()}))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Each attribute as a KeyValue field with tag ``tag``; one that cannot be encoded
    is left out and logged, as the SDK's encoder does."""
    if not attributes:
        return b""
    out = []
    for name, value in attributes.items():
        try:
            out.append(_field(tag, _key(name) + _field(b"\x12", _any_value(value))))
        except Exception as error:
            log.exception("Failed to encode key %s: %s", name, error)
    return b"".join(out)


def _count(tag: bytes, value: int) -> bytes:
    return tag + _varint(value) if value else b""


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in context.trace_state.items())))
    parent: SpanContext | None = span.parent
    if parent:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_string(b"\x2a", span.name))
    parts.append(_KIND[span.kind])
    if span.start_time:
        parts.append(b"\x39" + _pack_fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _pack_fixed64(span.end_time))
    parts.append(_attributes(b"\x4a", span.attributes))
    parts.append(_count(b"\x50", span.dropped_attributes))
    for event in span.events:
        parts.append(
            _field(
                b"\x5a",
                (b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b"")
                + (_string(b"\x12", event.name) if event.name else b"")
                + _attributes(b"\x1a", event.attributes)
                + _count(b"\x20", event.dropped_attributes),
            )
        )
    parts.append(_count(b"\x60", span.dropped_events))
    for link in span.links:
        parts.append(
            _field(
                b"\x6a",
                b"\x0a\x10"
                + link.context.trace_id.to_bytes(16, "big")
                + b"\x12\x08"
                + link.context.span_id.to_bytes(8, "big")
                + _attributes(b"\x22", link.attributes)
                + _count(b"\x28", link.dropped_attributes)
                + (_LINK_FLAGS_REMOTE if link.context.is_remote else _LINK_FLAGS_LOCAL),
            )
        )
    parts.append(_count(b"\x70", span.dropped_links))
    status = span.status
    code = status.status_code.value
    parts.append(
        _field(
            b"\x7a",
            (_string(b"\x12", status.description) if status.description else b"")
            + (b"\x18" + _varint(code) if code else b""),
        )
    )
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return (
        (_string(b"\x0a", scope.name) if scope.name else b"")
        + (_string(b"\x12", scope.version) if scope.version else b"")
        + _attributes(b"\x1a", scope.attributes)
    )


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An OTLP ExportTraceServiceRequest of ``spans`` (grouped by resource, then
    instrumentation scope, in order of appearance), serialised."""
    # Grouped by identity first (a provider's spans share one Resource object, whose
    # hash serialises its attributes), then merged by equality, like the SDK's encoder.
    by_identity: dict[tuple[int, int], list[bytes]] = {}
    first: dict[tuple[int, int], ReadableSpan] = {}
    for span in spans:
        key = (id(span.resource), id(span.instrumentation_scope))
        encoded = by_identity.get(key)
        if encoded is None:
            encoded = by_identity[key] = []
            first[key] = span
        encoded.append(_field(b"\x12", _span(span)))
    grouped: dict[Any, dict[InstrumentationScope | None, list[bytes]]] = {}
    for key, encoded in by_identity.items():
        span = first[key]
        by_scope = grouped.setdefault(span.resource, {})
        by_scope.setdefault(span.instrumentation_scope or None, []).extend(encoded)
    out = []
    for resource, by_scope in grouped.items():
        body = [_field(b"\x0a", _attributes(b"\x0a", resource.attributes))]
        for scope, encoded in by_scope.items():
            schema = scope.schema_url if scope is not None else None
            body.append(
                _field(
                    b"\x12",
                    _field(b"\x0a", _scope(scope))
                    + b"".join(encoded)
                    + (_string(b"\x1a", schema) if schema else b""),
                )
            )
        if resource.schema_url:
            body.append(_string(b"\x1a", resource.schema_url))
        out.append(_field(b"\x0a", b"".join(body)))
    return b"".join(out)


class _Encoded:
    """What the HTTP exporter takes from ``encode_spans``: it asks for the bytes."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializePartialToString(self) -> bytes:
        return self._data

    def SerializeToString(self) -> bytes:
        return self._data


def _encoded_request(spans: Sequence[ReadableSpan]) -> _Encoded:
    return _Encoded(encode_spans(spans))


def use_fast_encoding() -> bool:
    """Make the OTLP/HTTP span exporter encode with `encode_spans` (see the module's
    text); False when that exporter does not encode the way this expects (another
    version), which then keeps its own encoder."""
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    if not callable(getattr(trace_exporter, "encode_spans", None)):
        return False
    setattr(trace_exporter, "encode_spans", _encoded_request)  # noqa: B010
    return True


def grpc_span_exporter() -> SpanExporter:
    """The OTLP/gRPC span exporter, with its request parsed from `encode_spans`."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    class FastGrpcSpanExporter(OTLPSpanExporter):
        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
                encode_spans(data)
            )
            return request

    return FastGrpcSpanExporter()
