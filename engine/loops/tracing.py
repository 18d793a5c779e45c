"""Spans of the engine's roles, joined into one trace per execution.

The trace context travels as data, never through contextvars alone: the API records
its request's W3C ``traceparent`` in ExecutionStarted (``trace_context``), and every
trigger and task message carries the ``traceparent`` of the span that sent it, so
engine, relay, timers and workers in different processes add their spans to the
execution's one trace. A role that holds no message to take it from (the relay
publishing a task, the timer service firing a timer hours later) reads the recorded
context of the execution (`ExecutionTraces`).

Every role takes ``tracer: Tracer | None``; None (tracing off, the default) skips
all of this: no span objects, no lookups.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from uuid import UUID

import msgspec
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from engine.adapters.store import DueTimer, EventStore, StoredEvent
from engine.tracecontext import add_own_event

_propagator = TraceContextTextMapPropagator()
# What steplog itself writes as a traceparent (version 00, lower-case hex).
OWN_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch
_FLAGS = {f"{f:02x}": TraceFlags(f) for f in range(256)}
_NO_TRACE_STATE = TraceState.get_default()
_PARSED_SIZE = 1024
_parsed: dict[str, Context] = {}

# Attribute names (the steplog.* namespace; OpenTelemetry's semantic conventions have
# none for workflow engines).
EXECUTION_ID = "steplog.execution.id"
PUBLISH_EVENT = "steplog.relay.publish"
# OpenTelemetry's messaging convention for a message's id (here its stream entry id).
MESSAGE_ID = "messaging.message.id"


def parent_context(traceparent: str) -> Context | None:
    """The context to start a child span in: the span ``traceparent`` names, or None
    (a new trace) when it is empty or not a valid W3C traceparent."""
    if not traceparent:
        return None
    known = _parsed.get(traceparent)
    if known is not None:
        return known
    # What steplog itself writes (version 00, lower-case hex) is read without the
    # propagator's calls; anything else goes through the propagator.
    match = OWN_TRACEPARENT(traceparent)
    if match is None:
        return _propagator.extract({"traceparent": traceparent})
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not (trace_id and span_id):  # (an all-zero id is invalid)
        return _propagator.extract({"traceparent": traceparent})
    # The SpanContext its __new__ would build (remote, default trace state, valid), less
    # its checks: the ids are in range by their length.
    remote = tuple.__new__(
        SpanContext, (trace_id, span_id, True, _FLAGS[match[3]], _NO_TRACE_STATE, True)
    )
    # A context of its own (what the propagator returns too): a message's parent owes
    # nothing to the receiving loop's current context.
    context = Context({_SPAN_KEY: NonRecordingSpan(remote)})
    # The same context is parsed again for every span that a recorded one parents (the
    # relay's publish spans of one execution): kept, until many have been.
    if len(_parsed) >= _PARSED_SIZE:
        _parsed.clear()
    _parsed[traceparent] = context
    return context


def start_child(
    tracer: Tracer,
    name: str,
    traceparent: str,
    kind: SpanKind,
    attributes: dict[str, AttributeValue],
) -> AbstractContextManager[Span]:
    """A span made current, the child of the span ``traceparent`` names (a message's
    sender's; "" or not valid: a new trace). steplog's tracer (steplog.tracing) starts
    it from the traceparent as it is (its ``start_child``: a decision and a task
    attempt, the spans a workflow makes most, do not parse theirs), and takes
    ``attributes`` as they are: a new dict of the role's own, of plain values (str,
    bool, int, float); any other tracer from its parsed context."""
    own = getattr(tracer, "start_child", None)
    if own is not None:
        started: AbstractContextManager[Span] = own(name, traceparent, kind, attributes, True)
        return started
    return tracer.start_as_current_span(
        name, context=parent_context(traceparent), kind=kind, attributes=attributes
    )


class _TraceOnly(msgspec.Struct, rename="camel"):
    """The one field of an ExecutionStarted event read here (the rest is skipped)."""

    trace_context: str = ""


def recorded_trace_context(event_data: bytes) -> str:
    """The ``trace_context`` of an encoded ExecutionStarted event ("" when absent)."""
    try:
        return msgspec.json.decode(event_data, type=_TraceOnly).trace_context
    except msgspec.DecodeError:
        return ""


class ExecutionTraces:
    """The trace context each execution recorded at its start, cached (newest last).
    A miss reads the execution's first event (one short query); an unknown execution
    or one started with tracing off has ""."""

    def __init__(self, store: EventStore, size: int = 10_000) -> None:
        self._store = store
        self._size = size
        self._known: OrderedDict[UUID, str] = OrderedDict()

    def remember(self, execution_id: UUID, trace_context: str) -> None:
        self._known[execution_id] = trace_context
        self._known.move_to_end(execution_id)
        while len(self._known) > self._size:
            self._known.popitem(last=False)

    def known(self, execution_id: UUID) -> str | None:
        """The context when it is cached (None: `get` it)."""
        known = self._known.get(execution_id)
        if known is not None:
            self._known.move_to_end(execution_id)
        return known

    async def get(self, execution_id: UUID) -> str:
        known = self.known(execution_id)
        if known is not None:
            return known
        first = await self._store.load(execution_id, upto_seq=1)
        context = recorded_trace_context(first[0].data) if first else ""
        self.remember(execution_id, context)
        return context


async def message_parents(
    traces: ExecutionTraces, events: Sequence[StoredEvent]
) -> dict[UUID, str]:
    """The traceparent each message of a relay batch carries (a Begin trigger, a task):
    its execution's recorded context (an ExecutionStarted in the batch tells it at
    once), so the decision or task attempt that receives it is a child of the request
    that started the execution. The relay makes no span of its own: the receiving span
    records the publish as an event (`record_publish`). A batch that only publishes an
    execution's events to the events stream needs none for it."""
    sending: set[UUID] = set()
    for event in events:
        if event.type == "ExecutionStarted":
            traces.remember(event.execution_id, recorded_trace_context(event.data))
            sending.add(event.execution_id)
        elif event.type == "TaskScheduled":
            sending.add(event.execution_id)
    parents: dict[UUID, str] = {}
    for execution_id in sending:
        parent = traces.known(execution_id)
        parents[execution_id] = parent if parent is not None else await traces.get(execution_id)
    return parents


def record_publish(span: Span, entry_id: str) -> None:
    """The publish of the message ``span`` receives (a Begin trigger, a task), as an
    event of it named "steplog.relay.publish" at the time its stream entry was added
    (the milliseconds of the entry id Redis gave it), with that id. An event, not a span
    of the relay's: a span per execution and batch cost more than a tenth of what
    tracing adds (docs/observability.md, "What it costs"), and the event still shows
    when the message left and how long it waited to be read."""
    try:
        millis = int(entry_id.partition("-")[0])
    except ValueError:  # (not an id Redis gave)
        return
    add_own_event(span, PUBLISH_EVENT, {MESSAGE_ID: entry_id}, millis * 1_000_000)


def end_spans(spans: Iterable[Span], error: BaseException | None = None) -> None:
    """End ``spans``, marked failed with ``error`` when one is given."""
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, repr(error)))
        span.end()


async def timer_spans(
    tracer: Tracer, traces: ExecutionTraces, due: Sequence[DueTimer], now: dt.datetime
) -> list[Span]:
    """One started "steplog.timer.fire" span per due timer, each the child of its
    execution's recorded context (however long ago the execution started). The caller
    ends them once the triggers are out."""
    spans: list[Span] = []
    for timer in due:
        parent = await traces.get(timer.execution_id)
        spans.append(
            tracer.start_span(
                "steplog.timer.fire",
                context=parent_context(parent),
                kind=SpanKind.PRODUCER,
                # No execution id: the decision under it has one.
                attributes={
                    "steplog.timer.id": timer.timer_id,
                    "steplog.timer.delay_s": max((now - timer.due_at).total_seconds(), 0.0),
                },
            )
        )
    return spans
