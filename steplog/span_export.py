"""OTLP export from a child process: `ChildProcessExporter` hands each batch of spans
to a child process (steplog.export_process) as one msgpack message on a pipe; the
child reads them back as plain records and sends them with the OTLP exporter
(steplog.otlp's encoding, the SDK's client, its retries). This module is the pipe's
format (`encode_batch`, `decode_batch`) and the exporter that writes to it.

Why: in the process that makes the spans, the export thread's protobuf encoding and
HTTP client run under the GIL, beside the event loop: with every span sampled they
were about 45% of what tracing cost a 3-Task chain (docs/observability.md, "What it
costs"). steplog's spans (steplog.tracing's LeanSpan) end as the tuple that crosses
the pipe (`SpanRecord`), which the batch processor queues as it is (the exporter
``takes_records``); a batch is one msgpack encoding in C. Any other span (a driver's,
the SDK's) is made a record when its batch is sent. The child parses what the span's
process did not (trace and parent ids kept as hex), encodes and sends, on another
core where there is one.

The child inherits the environment (every ``OTEL_EXPORTER_OTLP_*`` variable applies
there as it would here), stderr and stdout. It runs in a session of its own, out of
reach of what a terminal or a supervisor sends the process group, and ignores SIGINT
and SIGTERM sent to it: it stops when its pipe closes, which happens at this process's
`shutdown` (the tracer provider's, at exit) or at its death however it died, after
exporting what it has read. A batch the child has not read yet when the pipe is full
waits (the span processor's thread blocks; spans beyond its queue are dropped, as when
any exporter is slow). A child that died is started again at the next batch (the
batch in flight is lost, and logged).
"""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext

_logger = logging.getLogger(__name__)

# A message on the pipe: its length (4 bytes, big-endian), then its bytes.
LENGTH = struct.Struct(">I")
_UINT64 = (1 << 64) - 1
_encoder = msgspec.msgpack.Encoder()
_STOP_TIMEOUT_S = 30.0

# A span as it crosses the pipe (what a LeanSpan ends as, steplog.tracing; `_record`
# makes one of any other span), plain values only, in the order of `_ReceivedSpan`'s
# fields: (group, name, kind, trace id as 32 hex digits, span id, flags, trace state
# header, parent as (span id or its 16 hex digits, is remote) or None, start time, end
# time, attributes, events as (name, time, attributes), links as (context as
# `_context` writes it, is remote, attributes), status as (code, description), dropped
# attributes, events, links). The group numbers the span's resource and
# instrumentation scope (`group_of`).
SpanRecord = tuple[Any, ...]

# The (resource, scope) groups numbered so far: their number by the ids of the two
# (kept, so that no id is reused), and what a message tells of each.
_groups: dict[tuple[int, int], int] = {}
_group_specs: dict[int, tuple[Any, ...]] = {}
_grouped: list[object] = []


def group_of(resource: Resource, scope: InstrumentationScope | None) -> int:
    """The number of the group of spans of ``resource`` and ``scope``."""
    key = (id(resource), id(scope))
    number = _groups.get(key)
    if number is None:
        _grouped.append((resource, scope))
        number = len(_group_specs)
        _group_specs[number] = (
            dict(resource.attributes),
            resource.schema_url,
            None
            if scope is None
            else (scope.name, scope.version, scope.schema_url, dict(scope.attributes or {})),
        )
        _groups[key] = number
    return number


def _context(context: SpanContext) -> tuple[int, int, int, int, str]:
    """A span context as (trace id high, low 64 bits, span id, flags, trace state)."""
    trace_id, span_id, _, flags, state = context[:5]
    # (flags & 0xFF: a plain int of the TraceFlags, which msgpack cannot encode; the
    # trace state's dict tested directly: its __len__ is a Python call)
    header = state.to_header() if getattr(state, "_dict", state) else ""
    return trace_id >> 64, trace_id & _UINT64, span_id, flags & 0xFF, header


def link_record(link: Link) -> tuple[Any, ...]:
    """A link as a record holds it."""
    return (_context(link.context), link.context.is_remote, dict(link.attributes or {}))


def _record(span: ReadableSpan) -> SpanRecord:
    """The record of a span that is not a LeanSpan (the SDK's: a driver's query)."""
    context, parent, status = span.get_span_context(), span.parent, span.status
    assert context is not None
    trace_id, span_id, _, flags, state = context[:5]
    return (
        group_of(span.resource, span.instrumentation_scope),
        span.name,
        span.kind._value_,
        f"{trace_id:032x}",
        span_id,
        flags & 0xFF,
        state.to_header() if getattr(state, "_dict", state) else "",
        None if parent is None else (parent[1], parent[2]),
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events],
        [link_record(link) for link in span.links],
        (status.status_code._value_, status.description),
        span.dropped_attributes,
        span.dropped_events,
        span.dropped_links,
    )


def encode_batch(spans: Sequence[SpanRecord | ReadableSpan]) -> bytes:
    """The message a batch crosses the pipe as: (the groups of its records, by number;
    the records). A record is written as it is (by msgpack, in C); any other span is
    made one first."""
    records = [span if type(span) is tuple else _record(span) for span in spans]  # type: ignore[arg-type]
    groups = {number: _group_specs[number] for number in {record[0] for record in records}}
    return _encoder.encode((groups, records))


# The message decoded (`decode_batch`) by msgspec in C: the groups into these, the
# records as plain lists (steplog.otlp encodes them as they are; gc=False: no cycles).


class _Group(msgspec.Struct, array_like=True, gc=False):
    resource_attributes: dict[str, Any]
    resource_schema_url: str
    scope: tuple[str, str | None, str | None, dict[str, Any]] | None


class _Message(msgspec.Struct, array_like=True, gc=False):
    groups: dict[int, _Group]
    spans: list[list[Any]]


_decoder = msgspec.msgpack.Decoder(_Message)


class Received(list[list[Any]]):
    """A batch `decode_batch` read: its span records (as msgpack decodes a `SpanRecord`:
    lists for tuples), which steplog.otlp's `encode_spans` encodes as they are, and
    ``groups``, the resource and instrumentation scope of each group number."""

    groups: dict[int, tuple[Resource, InstrumentationScope | None]]


def decode_batch(message: bytes) -> Received:
    """The span records of a message `encode_batch` made, with their groups."""
    decoded = _decoder.decode(message)
    received = Received(decoded.spans)
    received.groups = {}
    resources: list[tuple[dict[str, Any], str, Resource]] = []
    for number, group in decoded.groups.items():
        # One Resource for the groups of one (their spans are encoded together).
        resource = next(
            (
                known
                for attributes, schema_url, known in resources
                if (attributes, schema_url)
                == (group.resource_attributes, group.resource_schema_url)
            ),
            None,
        )
        if resource is None:
            resource = Resource(group.resource_attributes, group.resource_schema_url)
            resources.append((group.resource_attributes, group.resource_schema_url, resource))
        received.groups[number] = (
            resource,
            None
            if group.scope is None
            else InstrumentationScope(
                group.scope[0], group.scope[1], group.scope[2], group.scope[3] or None
            ),
        )
    return received


class ChildProcessExporter(SpanExporter):
    """Sends each batch to the child process that exports it (see the module
    docstring). The child starts with the exporter, when the process starts: its
    imports (the OTLP exporter, its HTTP or gRPC client, protobuf) cost it a few
    tenths of a second of CPU, which the first traffic would otherwise pay for."""

    # It takes a LeanSpan's record as it ends (steplog.tracing), not a ReadableSpan.
    takes_records = True

    def __init__(self, protocol: str) -> None:
        self._protocol = protocol
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._shut_down = False
        try:
            self._child = self._start()
        except OSError as exc:  # (tried again at the first batch)
            _logger.warning("span export process cannot start: %r", exc)

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "steplog.export_process", self._protocol],
            stdin=subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C or a supervisor's signal to the group
            # stops this process, whose pipe then closes, not the child first.
            start_new_session=True,
        )

    def export(self, spans: Sequence[SpanRecord | ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        try:
            message = encode_batch(spans)
        except Exception:
            _logger.exception("Failed to encode span batch")
            return SpanExportResult.FAILURE
        with self._lock:
            child = self._child
            if child is None or child.poll() is not None:
                if child is not None:
                    _logger.warning(
                        "span export process exited (%s): starting another", child.returncode
                    )
                    _close(child)
                try:
                    child = self._child = self._start()
                except OSError as exc:
                    _logger.warning("span export process cannot start: %r", exc)
                    return SpanExportResult.FAILURE
            pipe = child.stdin
            assert pipe is not None
            try:
                pipe.write(LENGTH.pack(len(message)))
                pipe.write(message)
                pipe.flush()
            except OSError as exc:  # (the child died while this was written)
                _logger.warning("span export process: batch of %d spans lost: %r", len(spans), exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the pipe and wait for the child to export what it read."""
        with self._lock:
            self._shut_down = True
            child, self._child = self._child, None
        if child is None:
            return
        _close(child)
        try:
            child.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _logger.warning("span export process did not stop in %s s: killed", _STOP_TIMEOUT_S)
            child.kill()
            child.wait()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Every batch is in the pipe once `export` returned; the child sends it.
        return True


def _close(child: subprocess.Popen[bytes]) -> None:
    """Close the pipe to ``child`` (the end of its input)."""
    try:
        if child.stdin is not None:
            child.stdin.close()
    except OSError:  # (what a dead child left unread is lost, and was logged)
        pass
