"""The OTLP/protobuf encoding of a batch of spans, written directly.

The OTLP exporters encode a batch by building the protobuf message objects of every
span, attribute and value (`opentelemetry.exporter.otlp.proto.common`): each nested
message is copied into its parent when given to it, and each span hashes its
resource (a JSON dump). That is most of what tracing costs steplog per span (in the
span processor's export thread). `encode_spans` writes the same bytes (the same
message: `tests/unit/test_otlp.py` parses both and compares) straight from the
spans, with the resource and the instrumentation scope encoded once per batch.
`LeanOtlpHttpExporter` and `lean_grpc_exporter` are the SDK's exporters with it.

The wire format (https://protobuf.dev/programming-guides/encoding/): a field is a
varint key (field number << 3 | wire type) then its value; wire type 0 a varint,
1 eight little-endian bytes, 2 a varint length and the bytes, 5 four bytes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

_logger = logging.getLogger(__name__)

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_pack_fixed32 = struct.Struct("<I").pack

# SpanKind -> the OTLP enum (SPAN_KIND_INTERNAL = 1, ...).
_KIND = {
    kind: b"\x30" + bytes((number,))  # field 6, a varint
    for kind, number in (
        (SpanKind.INTERNAL, 1),
        (SpanKind.SERVER, 2),
        (SpanKind.CLIENT, 3),
        (SpanKind.PRODUCER, 4),
        (SpanKind.CONSUMER, 5),
    )
}
_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100), | IS_REMOTE (0x200).
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


_ONE_BYTE = [bytes((i,)) for i in range(128)]
_two_bytes = struct.Struct("BB").pack


def _varint(value: int) -> bytes:
    if value < 0x80:
        if value >= 0:
            return _ONE_BYTE[value]
        value += 1 << 64  # int64 as two's complement, ten bytes
    elif value < 0x4000:
        return _two_bytes(value & 0x7F | 0x80, value >> 7)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return b"".join((_varint(field << 3 | 2), _varint(len(payload)), payload))


def _string(field: int, text: str) -> bytes:
    return _len(field, text.encode()) if text else b""


def _any_value(value: Any) -> bytes:
    """An AnyValue message."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _len(7, value)
    if isinstance(value, Sequence):
        return _len(5, b"".join([_len(1, _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _len(6, b"".join([_len(1, _key_value(str(k), v)) for k, v in value.items()]))
    if value is None:
        return b""
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _string(1, key) + _len(2, _any_value(value))


# Encoded attributes (field, key, value type, value -> the field's bytes) and names:
# steplog's spans repeat the same few (states, statuses, triggers, routes).
_CACHED = (str, bool, int, float)
_CACHE_SIZE = 4096
_attribute_cache: dict[tuple[int, str, type, Any], bytes] = {}
_name_cache: dict[tuple[int, str], bytes] = {}


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    out = []
    cache = _attribute_cache
    for key, value in attributes.items():
        kind = type(value)
        if kind in _CACHED:
            known = cache.get((field, key, kind, value))
            if known is not None:
                out.append(known)
                continue
        try:
            encoded = _len(field, _key_value(key, value))
        except TypeError:
            _logger.exception("Failed to encode key %s", key)
            continue
        if kind in _CACHED:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()  # (unique values, execution ids, come and go)
            cache[field, key, kind, value] = encoded
        out.append(encoded)
    return b"".join(out)


def _name(field: int, name: str) -> bytes:
    """Field 2 (an event's) or 5 (a span's) ``name``."""
    known = _name_cache.get((field, name))
    if known is None:
        if len(_name_cache) >= _CACHE_SIZE:
            _name_cache.clear()
        known = _name_cache[field, name] = _string(field, name)
    return known


_FLAGS_LOCAL = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)  # field 16, fixed32
_FLAGS_REMOTE = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
_STATUS_UNSET = b"\x7a\x00"  # field 15: an empty Status


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_string(3, context.trace_state.to_header()))
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    start, end = span.start_time, span.end_time
    parts += (
        _name(5, span.name),
        _KIND[span.kind],
        b"\x39" + _pack_fixed64(start) if start else b"",
        b"\x41" + _pack_fixed64(end) if end else b"",
        _attributes(9, span.attributes),
    )
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b"".join(
            (
                b"\x09",
                _pack_fixed64(event.timestamp),
                _name(2, event.name),
                _attributes(3, event.attributes),
                b"\x20" + _varint(event.dropped_attributes) if event.dropped_attributes else b"",
            )
        )
        parts.append(_len(11, body))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
        if link.context.trace_state:
            body += _string(3, link.context.trace_state.to_header())
        body += _attributes(4, link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += b"\x35" + _pack_fixed32(
            _HAS_IS_REMOTE | (_IS_REMOTE if link.context.is_remote else 0)
        )  # field 6, fixed32
        parts.append(_len(13, body))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    if status.status_code is StatusCode.UNSET and not status.description:
        parts.append(_STATUS_UNSET)
    else:
        code = _STATUS[status.status_code]
        body = _string(2, status.description or "") + (b"\x18" + _varint(code) if code else b"")
        parts.append(_len(15, body))
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return (
        _string(1, scope.name) + _string(2, scope.version or "") + _attributes(3, scope.attributes)
    )


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ExportTraceServiceRequest of ``spans`` (grouped by resource, then
    by instrumentation scope, in the order each first appears, as the SDK groups them)."""
    groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]]
    groups = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        by_scope = groups.setdefault(id(resource), (resource, {}))[1]
        by_scope.setdefault(id(scope), (scope, []))[1].append(_span(span))
    out = []
    for resource, by_scope in groups.values():
        body = _len(1, _attributes(1, resource.attributes))
        for scope, encoded in by_scope.values():
            scope_body = _len(1, _scope(scope)) + b"".join(_len(2, s) for s in encoded)
            if scope is not None and scope.schema_url:
                scope_body += _string(3, scope.schema_url)
            body += _len(2, scope_body)
        body += _string(3, resource.schema_url)
        out.append(_len(1, body))
    return b"".join(out)


class LeanOtlpHttpExporter(HttpSpanExporter):
    """The SDK's OTLP/HTTP (protobuf) span exporter, encoding with `encode_spans`: its
    ``export`` as in opentelemetry-exporter-otlp-proto-http 1.45 (metrics, the size
    limit, the client with its retries, headers and compression), the encoding
    replaced. With another version of that package, whose private members differ, it
    is the SDK's exporter unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lean = all(
            hasattr(self, name) for name in ("_client", "_metrics", "_max_request_size")
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self._lean or self._shutdown:
            return super().export(spans)
        from opentelemetry.exporter.otlp.proto.http._common import (
            RequestPayloadTooLargeError,
            _is_request_too_large,
        )

        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans(spans)
            except Exception as error:
                _logger.exception("Failed to encode span batch")
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(data, self._max_request_size):
                _logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size"
                    " %d bytes.",
                    len(data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(data)} bytes exceeds "
                    f"max_request_size {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {"http.response.status_code": sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


def lean_grpc_exporter() -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter, encoding with `encode_spans` (the request
    message is parsed from its bytes: one call into the protobuf library's C code).
    Imported here: grpc is loaded only when it is used."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class LeanOtlpGrpcExporter(OTLPSpanExporter):
        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
                encode_spans(data)
            )
            return request

    return LeanOtlpGrpcExporter()
