"""The OTLP/protobuf encoding of a batch of spans, written directly.

The OTLP exporters encode a batch by building the protobuf message objects of every
span, attribute and value (`opentelemetry.exporter.otlp.proto.common`): each nested
message is copied into its parent when given to it, and each span hashes its
resource (a JSON dump). `encode_spans` writes the same message
(`tests/unit/test_otlp.py` parses both and compares) from the records spans cross the
export process's pipe as (steplog.span_export), with the resource and the
instrumentation scope encoded once per batch: each record by `_speedups`
(steplog/_otlp_speedups.c) where it is built, else by `_record_span`, the same bytes.
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

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.span import TraceState

from steplog.span_export import Received, decode_batch, encode_batch

try:  # (optional: built where a C compiler is, setup.py)
    from steplog import _otlp_speedups as _speedups
except ImportError:  # pragma: no cover (where it is not built)
    _speedups = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_pack_fixed32 = struct.Struct("<I").pack

# A SpanKind's value -> the OTLP enum (SPAN_KIND_INTERNAL = 1, ...), as field 6 (a varint).
_KIND = {kind._value_: b"\x30" + bytes((kind._value_ + 1,)) for kind in SpanKind}
# A record's status code (a StatusCode's value) -> the OTLP enum (STATUS_CODE_UNSET = 0,
# OK = 1, ERROR = 2).
_STATUS_CODES = {
    code._value_: number
    for code, number in ((StatusCode.UNSET, 0), (StatusCode.OK, 1), (StatusCode.ERROR, 2))
}
_UNSET = StatusCode.UNSET
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
# steplog's spans repeat the same few (states, statuses, triggers, routes). A list's
# key holds its items as a tuple (lists of str only: 1 and True are equal keys). A
# float (a duration) seldom repeats: only the bytes before its value are kept
# (`_float_prefix`).
_CACHED = frozenset((str, bool, int))
_SEQUENCES = frozenset((list, tuple))
_STR = frozenset((str,))
_CACHE_SIZE = 4096
_attribute_cache: dict[tuple[int, str, type, Any], bytes] = {}
_float_prefix_cache: dict[tuple[int, str], bytes] = {}
_name_cache: dict[str, bytes] = {}


def _keep(cache: dict[Any, bytes], key: Any, encoded: bytes) -> bytes:
    """``encoded``, kept in ``cache`` (emptied when full: unique values such as
    execution ids come and go)."""
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = encoded
    return encoded


def _float_prefix(field: int, key: str) -> bytes:
    """A float attribute's bytes up to its 8 value bytes (their length is fixed)."""
    known = _float_prefix_cache.get((field, key))
    if known is None:
        known = _keep(_float_prefix_cache, (field, key), _len(field, _key_value(key, 0.0))[:-8])
    return known


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    out = []
    cache = _attribute_cache
    for key, value in attributes.items():
        kind = type(value)
        if kind is float:
            out.append(_float_prefix(field, key) + _pack_double(value))
            continue
        cached = kind in _CACHED
        if cached:
            known = cache.get((field, key, kind, value))
        elif kind in _SEQUENCES and _STR.issuperset(map(type, value)):
            cached, value = True, tuple(value)
            known = cache.get((field, key, kind, value))
        else:
            known = None
        if known is not None:
            out.append(known)
            continue
        try:
            encoded = _len(field, _key_value(key, value))
        except TypeError:
            _logger.exception("Failed to encode key %s", key)
            continue
        if cached:
            _keep(cache, (field, key, kind, value), encoded)
        out.append(encoded)
    return b"".join(out)


def _event_name(name: str) -> bytes:
    """An event's ``name`` (field 2)."""
    known = _name_cache.get(name)
    if known is None:
        known = _keep(_name_cache, name, _string(2, name))
    return known


_FLAGS_LOCAL = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)  # field 16, fixed32
_FLAGS_REMOTE = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
_STATUS_UNSET = b"\x7a\x00"  # field 15: an empty Status
_UINT64 = (1 << 64) - 1
# trace_id (field 1, 16 bytes), span_id (field 2, 8 bytes) [, parent_span_id (field 4)],
# packed at once (the ids big-endian, as their bytes are written).
_ids = struct.Struct(">2sQQ2sQ").pack
_ids_parent = struct.Struct(">2sQQ2sQ2sQ").pack
# start_time_unix_nano (field 7), end_time_unix_nano (field 8): fixed64, little-endian.
_times = struct.Struct("<BQBQ").pack
_event_time = struct.Struct("<BQ").pack  # an event's time_unix_nano (field 1)
_name_kind_cache: dict[tuple[str, int], bytes] = {}


def _name_kind(name: str, kind: int) -> bytes:
    """A span's fields 5 (name) and 6 (kind: a SpanKind's value), as they repeat."""
    known = _name_kind_cache.get((name, kind))
    if known is None:
        known = _keep(_name_kind_cache, (name, kind), _string(5, name) + _KIND[kind])
    return known


def _record_span(record: Sequence[Any]) -> bytes:
    """A span record as `span_export.decode_batch` reads it (a list, in the order of
    `span_export.SpanRecord`), as field 2 of its ScopeSpans (the field's key and length
    included): what `_speedups.encode_spans` writes in C, and the encoding of the
    records it leaves to Python."""
    (
        _,
        name,
        kind,
        trace,
        span_id,
        _,
        trace_state,
        parent,
        start,
        end,
        attributes,
        events,
        links,
        status,
        dropped_attributes,
        dropped_events,
        dropped_links,
    ) = record
    parent_id, remote = (None, False) if parent is None else parent
    if type(parent_id) is str:
        parent_id = int(parent_id, 16)
    parts = _head(int(trace, 16), span_id, trace_state, parent_id)
    parts.append(_name_kind(name, kind))
    _times_of(parts, start, end)
    if attributes:
        parts.append(_attributes(9, attributes))
    if dropped_attributes:
        parts.append(b"\x50" + _varint(dropped_attributes))
    for event_name, timestamp, event_attributes in events:
        body = _event_time(0x09, timestamp) + _event_name(event_name)
        if event_attributes:
            body += _attributes(3, event_attributes)
        parts.append(_len(11, body))
    if dropped_events:
        parts.append(b"\x60" + _varint(dropped_events))
    for (high, low, link_span_id, _, link_state), link_remote, link_attributes in links:
        # (a trace state as its parsed header: what the SDK's TraceState keeps of it)
        header = TraceState.from_header([link_state]).to_header() if link_state else ""
        parts.append(_link((high << 64) | low, link_span_id, header, link_attributes, link_remote))
    if dropped_links:
        parts.append(b"\x70" + _varint(dropped_links))
    code, description = status
    parts.append(_status(_STATUS_CODES[code], description))
    parts.append(_FLAGS_REMOTE if remote else _FLAGS_LOCAL)
    return _scope_span(parts)


def _head(trace_id: int, span_id: int, trace_state: str, parent_id: int | None) -> list[bytes]:
    """A span's fields 1 to 4: its trace and span ids, trace state, parent's id."""
    high, low = trace_id >> 64, trace_id & _UINT64
    if parent_id is None:
        head = _ids(b"\x0a\x10", high, low, b"\x12\x08", span_id)
    else:
        head = _ids_parent(b"\x0a\x10", high, low, b"\x12\x08", span_id, b"\x22\x08", parent_id)
    if trace_state:
        # (field 3 comes before field 4, the parent: re-order as the fields are numbered)
        return [head[:28], _string(3, trace_state), head[28:]]
    return [head]


def _times_of(parts: list[bytes], start: int | None, end: int | None) -> None:
    """A span's start_time_unix_nano (field 7), end_time_unix_nano (field 8)."""
    if start and end:
        parts.append(_times(0x39, start, 0x41, end))
    else:
        if start:
            parts.append(b"\x39" + _pack_fixed64(start))
        if end:
            parts.append(b"\x41" + _pack_fixed64(end))


def _link(
    trace_id: int,
    span_id: int,
    trace_state: str,
    attributes: Mapping[str, Any] | None,
    remote: bool,
) -> bytes:
    """A span's link (field 13)."""
    body = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08" + span_id.to_bytes(8, "big")
    if trace_state:
        body += _string(3, trace_state)
    body += _attributes(4, attributes)
    body += b"\x35" + _pack_fixed32(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))  # field 6
    return _len(13, body)


def _status(code: int, description: str | None) -> bytes:
    """A span's status (field 15)."""
    if not code and not description:
        return _STATUS_UNSET
    body = _string(2, description or "") + (b"\x18" + _varint(code) if code else b"")
    return _len(15, body)


def _scope_span(parts: list[bytes]) -> bytes:
    """A span's fields as field 2 of its ScopeSpans."""
    body = b"".join(parts)
    size = len(body)
    if size < 0x80:
        return b"\x12" + _ONE_BYTE[size] + body
    return b"\x12" + _varint(size) + body


def _records(records: list[list[Any]]) -> bytes:
    """The spans of ScopeSpans of ``records``: by `_speedups` (in C) when it is built and
    takes them, else by `_record_span` (the same bytes; a value the C code does not
    handle, or a record it finds wrong, is left to it, which encodes, logs or raises
    as it would have alone)."""
    if _speedups is not None:
        try:
            encoded: bytes = _speedups.encode_spans(records)
            return encoded
        except Exception:  # (what Python makes of the records is the answer)
            pass
    return b"".join([_record_span(record) for record in records])


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return (
        _string(1, scope.name) + _string(2, scope.version or "") + _attributes(3, scope.attributes)
    )


def encode_spans(spans: Sequence[ReadableSpan] | Received) -> bytes:
    """The serialized ExportTraceServiceRequest of ``spans`` (grouped by resource, then
    by instrumentation scope, in the order each first appears, as the SDK groups them):
    the records of a batch `span_export.decode_batch` read, or any spans, made such a
    batch first (`as_received`)."""
    received = as_received(spans)
    numbers = {record[0] for record in received}
    by_number = {numbers.pop(): received} if len(numbers) == 1 else _by_number(received)
    # id(resource) -> (resource, id(scope) -> (scope, its spans' encodings))
    groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]]
    groups = {}
    for number, records in by_number.items():
        resource, scope = received.groups[number]
        by_scope = groups.setdefault(id(resource), (resource, {}))[1]
        by_scope.setdefault(id(scope), (scope, []))[1].append(_records(records))
    # ResourceSpans (field 1) of ScopeSpans (field 2) of the spans, each message's bytes
    # put together once, at the end (a batch is a few hundred kB: nesting by copying
    # cost more than a microsecond a span).
    out: list[bytes] = []
    for resource, by_scope in groups.values():
        resource_parts = [_len(1, _attributes(1, resource.attributes))]
        for scope, encoded in by_scope.values():
            scope_parts = [_len(1, _scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_parts.append(_string(3, scope.schema_url))
            resource_parts += [b"\x12", _varint(sum(map(len, scope_parts))), *scope_parts]
        resource_parts.append(_string(3, resource.schema_url))
        out += [b"\x0a", _varint(sum(map(len, resource_parts))), *resource_parts]
    return b"".join(out)


def _by_number(records: list[list[Any]]) -> dict[int, list[list[Any]]]:
    """``records`` by their group's number, in the order each first appears."""
    by_number: dict[int, list[list[Any]]] = {}
    for record in records:
        by_number.setdefault(record[0], []).append(record)
    return by_number


def as_received(spans: Sequence[Any]) -> Received:
    """A batch as the export process receives it (steplog.span_export: spans and span
    records through msgpack and back, in C), for `encode_spans`: the exporters in the
    process take the records steplog's spans end as, as the export process does."""
    if isinstance(spans, Received):  # (the export process's: read from its pipe)
        return spans
    return decode_batch(encode_batch(spans))


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
        # With its own encoding, it takes the records steplog's spans end as, as the
        # export process does (steplog.span_export).
        self.takes_records = self._lean
        session = getattr(
            getattr(getattr(self, "_client", None), "_transport", None), "_session", None
        )
        endpoint = getattr(self, "_endpoint", None)
        if isinstance(session, requests.Session) and isinstance(endpoint, str):
            pin_environment(session, endpoint)

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


def pin_environment(session: requests.Session, url: str) -> None:
    """Read once what ``session`` reads of the environment at every request to ``url``
    (its only address: the exporter follows no redirect), and stop it reading again:
    the proxies (``HTTP(S)_PROXY``, ``NO_PROXY``), the CA bundle (``REQUESTS_CA_BUNDLE``,
    ``CURL_CA_BUNDLE``) and ~/.netrc's credentials. Each request then sends exactly what
    it sent before; reading them went through every environment variable twice per
    batch, about a third of the CPU a batch's POST costs."""
    if not session.trust_env:
        return
    settings = session.merge_environment_settings(url, {}, None, None, None)
    netrc = None if session.auth else requests.utils.get_netrc_auth(url)
    session.trust_env = False
    session.proxies = settings["proxies"]
    session.verify = settings["verify"]
    session.cert = settings["cert"]
    if netrc:
        session.auth = netrc


def lean_grpc_exporter() -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter, encoding with `encode_spans` (the request
    message is parsed from its bytes: one call into the protobuf library's C code).
    Imported here: grpc is loaded only when it is used."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class LeanOtlpGrpcExporter(OTLPSpanExporter):
        # It takes the records steplog's spans end as (steplog.span_export).
        takes_records = True

        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
                encode_spans(data)
            )
            return request

    return LeanOtlpGrpcExporter()
