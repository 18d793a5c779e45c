"""OpenTelemetry tracing: the tracer provider of a process, from the standard OTEL_* variables.

Off by default: `tracer_provider(settings)` is None unless ``OTEL_TRACES_EXPORTER``
names an exporter (``otlp``, ``console``, comma separated; ``none`` or unset: off;
``OTEL_SDK_DISABLED=true`` turns it off whatever the rest says). Settings reads those
two and the OTLP protocol (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or
``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``, the default, or ``grpc``). Every
other standard variable is read by the OpenTelemetry SDK itself when the provider is
built: the endpoint, headers, timeout and compression (``OTEL_EXPORTER_OTLP_*``), the
sampler (``OTEL_TRACES_SAMPLER`` / ``_ARG``, parent-based always-on by default), the
resource (``OTEL_SERVICE_NAME``, "steplog" when unset; ``OTEL_RESOURCE_ATTRIBUTES``)
and the batch processor (``OTEL_BSP_*``). OTLP batches are encoded and sent by a child
process (steplog.export_process) unless ``STEPLOG_TRACE_EXPORT_IN_PROCESS=true``.

The provider is passed to whoever spans (the loops, the service, the API) as a
`LeanTracer` over it (its sampler, resource and span processors, with spans that cost
a fraction of the SDK's and end as the records the export process takes:
docs/observability.md, "What it costs"); it is never
installed as OpenTelemetry's global provider, so tests can give each running steplog
its own (e.g. with an in-memory exporter). The OTLP exporters are the SDK's with
steplog.otlp's encoding.
`instrument_drivers` adds the maintained asyncpg and Redis instrumentations (one span
per query or command; with ``STEPLOG_TRACE_DRIVERS=true``, as they more than double
the cost of tracing), whose spans only appear inside a trace: see `InsideTraces`.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import Token
from random import getrandbits
from types import MappingProxyType, TracebackType
from typing import Any, cast

from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    StaticSampler,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from engine.loops.tracing import OWN_TRACEPARENT
from engine.loops.tracing import parent_context as _parent_context
from engine.tracecontext import CURRENT as _CURRENT
from steplog.settings import Settings
from steplog.span_export import SpanRecord, group_of, link_record

try:  # (optional: built where a C compiler is, setup.py)
    from steplog import _span_speedups as _speedups
except ImportError:  # pragma: no cover (where it is not built)
    _speedups = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

SERVICE = "steplog"
INSTRUMENTATION_SCOPE = "steplog"


class InsideTraces(Sampler):
    """Drops a client span (a database query, a Redis command) that would begin a trace
    of its own, and defers every other decision to ``inner`` (the configured sampler).
    The drivers' instrumentations span every call, the idle polls of the relay, the
    timers and the consumers included: without this, each would be a trace of its own,
    several per second per process, none about an execution."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if (
            kind == SpanKind.CLIENT
            and not get_current_span(parent_context).get_span_context().is_valid
        ):
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"InsideTraces{{{self.inner.get_description()}}}"


def _exporter(name: str, protocol: str, in_process: bool) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if not in_process:
        # Encoded and sent by a child process (steplog.export_process), off this one's GIL.
        from steplog.span_export import ChildProcessExporter

        return ChildProcessExporter(protocol)
    # The SDK's OTLP exporters with a faster encoding of the same bytes (steplog.otlp).
    from steplog.otlp import LeanOtlpHttpExporter, lean_grpc_exporter

    if protocol == "grpc":
        return lean_grpc_exporter()
    return LeanOtlpHttpExporter()


def tracer_provider(settings: Settings) -> TracerProvider | None:
    """The process's tracer provider as configured, None with tracing off. The caller
    shuts it down at exit (which exports the spans still batched)."""
    exporters = [e for e in settings.otel_traces_exporter if e != "none"]
    if not exporters:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    # The sampler the SDK reads from OTEL_TRACES_SAMPLER, wrapped (see InsideTraces).
    configured = TracerProvider(shutdown_on_exit=False).sampler
    provider = TracerProvider(
        resource=resource, sampler=InsideTraces(configured), shutdown_on_exit=False
    )
    for name in exporters:
        exporter = _exporter(
            name, settings.otel_exporter_otlp_protocol, settings.trace_export_in_process
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def instrument_drivers(provider: TracerProvider) -> Callable[[], None]:
    """Span every asyncpg query and Redis command with the maintained instrumentations
    (opentelemetry-instrumentation-asyncpg, -redis; ``redis.asyncio`` included). They
    patch the driver modules for the whole process: the returned function undoes it."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    asyncpg_instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    redis_instrumentor = RedisInstrumentor()
    asyncpg_instrumentor.instrument(tracer_provider=provider)
    redis_instrumentor.instrument(tracer_provider=provider)

    def undo() -> None:
        redis_instrumentor.uninstrument()
        asyncpg_instrumentor.uninstrument()

    return undo


class LeanSpan(Span):
    """A recording span that ends as a record. Its fields are what an export needs, in
    plain values: the trace id as the hex of a traceparent, a remote parent as the
    traceparent it was started from (`LeanTracer.start_child` does not parse it),
    attributes in a dict, events as (name, time, attributes) tuples. Ended, it goes to
    a batch processor whose exporter takes records (steplog.span_export's) as one tuple
    (`record`), and to any other processor as the SDK's ReadableSpan (`readable`). The
    SDK's span records through a locked, validating BoundedAttributes per span and per
    event and copies itself into a ReadableSpan at its end; its context is parsed and
    built whether or not anything reads it. Values steplog sets are valid by
    construction (str, bool, int, float, tuples of str); any other value (a handler's
    own span) is checked as the SDK checks it (`_valid`)."""

    # No __slots__: steplog._span_speedups's SpanCore holds these fields for
    # `_FastLeanSpan`, a subclass of both, and two bases may not both lay out slots
    # (here they are in the instance's dict, which Span gives it anyway).

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        kind: SpanKind,
        trace: str,
        span_id: int,
        flags: int,
        trace_state: TraceState,
        parent: SpanContext | str | None,
        attributes: dict[str, AttributeValue],
        links: Sequence[Link],
        start_time: int,
        context: SpanContext | None = None,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._trace = trace  # (32 lower-case hex digits)
        self._span_id = span_id
        self._flags = flags
        self._trace_state = trace_state
        # None (a root span), the parent's SpanContext, or the traceparent of a remote
        # parent (start_child's).
        self._parent = parent
        self._attributes = attributes
        self._links = links
        self._start_time = start_time
        self._context = context  # (built when first asked for: `get_span_context`)
        self._end_time: int | None = None
        self._events: list[tuple[str, int, dict[str, AttributeValue]]] | tuple[()] = ()
        self._status = _UNSET
        self._dropped_attributes = 0
        self._dropped_events = 0

    # The Span API.

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            # The SpanContext its __new__ would build (local, valid), without the call.
            context = self._context = tuple.__new__(
                SpanContext,
                (
                    int(self._trace, 16),
                    self._span_id,
                    False,
                    _FLAGS[self._flags],
                    self._trace_state,
                    True,
                ),
            )
        return context

    @property
    def traceparent(self) -> str:
        """The span's W3C traceparent, without its context built ("" for a span whose
        ids are not valid: an id generator's zero, as `traceparent_of` in
        engine.tracecontext says of one)."""
        context = self._context
        if context is not None and not context[5]:  # (a SpanContext: is_valid)
            return ""
        return f"00-{self._trace}-{self._span_id:016x}-{self._flags:02x}"

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is None:
            for key, value in attributes.items():
                recorded = self._attributes
                if (
                    (
                        type(value) in _PLAIN
                        # a tuple of str (a decision's states), as the SDK would store it
                        or (type(value) is tuple and _STR.issuperset(map(type, value)))
                    )
                    and len(recorded) < self._tracer.max_attributes
                    and key not in recorded
                ):
                    recorded[key] = value
                else:
                    self._set(key, value)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None:
            self._set(key, value)

    def _set(self, key: str, value: AttributeValue) -> None:
        if type(value) not in _PLAIN:
            checked = _valid(key, value)
            if checked is None:
                return
            value = checked
        # As the SDK's BoundedAttributes: a key set again moves to the end; when the
        # span holds its limit, the oldest key gives way (and counts as dropped).
        attributes = self._attributes
        if key in attributes:
            del attributes[key]
        elif len(attributes) >= self._tracer.max_attributes:
            if not attributes:  # a limit of 0
                self._dropped_attributes += 1
                return
            del attributes[next(iter(attributes))]
            self._dropped_attributes += 1
        attributes[key] = value

    def set_own_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """`set_attributes` of steplog's own (engine.tracecontext.set_own_attributes):
        ``attributes`` are valid as the SDK stores them (str, bool, int, float, tuples
        of one of them), so they are added as they are while the span holds none of
        their keys and stays within its limit; otherwise as `set_attributes` does."""
        recorded = self._attributes
        if (
            self._end_time is None
            and len(recorded) + len(attributes) <= self._tracer.max_attributes
            and recorded.keys().isdisjoint(attributes)
        ):
            recorded.update(attributes)
        else:
            self.set_attributes(attributes)

    def add_own_event(
        self, name: str, attributes: Mapping[str, AttributeValue], timestamp: int | None = None
    ) -> None:
        """`add_event` of steplog's own (engine.tracecontext.add_own_event):
        ``attributes`` is a dict of its own, of plain values, which the event keeps
        without the copy and the checks `add_event` makes."""
        if self._end_time is not None:
            return
        events = self._events
        if len(events) >= self._tracer.max_events:  # (the limit's bookkeeping)
            self.add_event(name, attributes, timestamp)
            return
        if not events:  # (the empty tuple it starts with)
            events = self._events = []
        events.append(
            (name, timestamp or time.time_ns(), cast(dict[str, AttributeValue], attributes))
        )

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is not None:
            return
        events = self._events
        if not events:  # (the empty tuple it starts with)
            events = self._events = []
        if len(events) >= self._tracer.max_events:  # the oldest gives way, as in the SDK
            self._dropped_events += 1
            if not events:  # a limit of 0
                return
            del events[0]
        checked: dict[str, AttributeValue]
        if not attributes:
            checked = {}
        elif _PLAIN.issuperset(map(type, attributes.values())):
            checked = dict(attributes)  # (a copy, as the SDK's: the caller may reuse its own)
        else:
            checked = {}
            for key, value in attributes.items():
                if type(value) not in _PLAIN and (value := _valid(key, value)) is None:
                    continue
                checked[key] = value
        events.append((name, timestamp or time.time_ns(), checked))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links = [*self._links, Link(context, attributes)]

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK's span: OK is final, UNSET is ignored.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        tracer = self._tracer
        sampled = bool(self._flags & _SAMPLED)
        if sampled and tracer.takes_records:
            record = self.record()
            for take in tracer.takes_records:
                take(record)
        if (sampled and tracer.emits) or tracer.ends:
            self._hand_readable(sampled)

    def _hand_readable(self, sampled: bool) -> None:
        """The ended span, as the SDK's ReadableSpan, to the processors that take one:
        a batch processor's queue when it is sampled (`LeanTracer.emits`), any other
        processor's ``on_end`` (`ends`)."""
        tracer = self._tracer
        readable = None
        if sampled and tracer.emits:
            readable = self.readable()
            for emit in tracer.emits:
                emit(readable)
        if tracer.ends:
            readable = readable or self.readable()
            for on_end in tracer.ends:
                on_end(readable)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self.is_recording():
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    # What a processor's on_start may read of it, as of the SDK's span.

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def context(self) -> SpanContext:
        return self.get_span_context()

    @property
    def parent(self) -> SpanContext | None:
        parent = self._parent
        return _remote_parent(parent) if isinstance(parent, str) else parent

    @property
    def attributes(self) -> Mapping[str, AttributeValue]:
        return MappingProxyType(self._attributes)

    @property
    def start_time(self) -> int:
        return self._start_time

    @property
    def resource(self) -> Resource:
        return self._tracer.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    # What it ends as.

    def record(self) -> SpanRecord:
        """The ended span as steplog.span_export sends it (`span_export.SpanRecord`)."""
        parent = self._parent
        state = self._trace_state
        status = self._status
        return (
            self._tracer.group,
            self._name,
            self._kind._value_,  # (`.value` is a descriptor call)
            self._trace,
            self._span_id,
            self._flags,
            # (the trace state's dict tested directly: its __len__ is a Python call)
            state.to_header() if getattr(state, "_dict", state) else "",
            None
            if parent is None
            else (parent[36:52], True)
            if type(parent) is str
            else (parent[1], parent[2]),
            self._start_time,
            self._end_time,
            self._attributes,
            self._events,
            _link_records(self._links) if self._links else (),
            (status.status_code._value_, status.description),
            self._dropped_attributes,
            self._dropped_events,
            0,
        )

    def readable(self) -> ReadableSpan:
        """The ended span as the SDK's span processors and exporters take it."""
        readable = _EndedSpan(
            self._name,
            context=self.get_span_context(),
            parent=self.parent,
            resource=self._tracer.resource,
            attributes=dict(self._attributes),
            events=[Event(name, attrs, timestamp) for name, timestamp, attrs in self._events],
            links=tuple(self._links),
            kind=self._kind,
            status=self._status,
            start_time=self._start_time,
            end_time=self._end_time,
            instrumentation_scope=self._tracer.scope,
        )
        readable.dropped = (self._dropped_attributes, self._dropped_events)
        return readable


def _remote_parent(traceparent: str) -> SpanContext:
    """The context of the remote parent a span was started from (a traceparent steplog
    wrote: valid, version 00)."""
    return SpanContext(
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
    )


class _EndedSpan(ReadableSpan):
    """A LeanSpan as a ReadableSpan, with what it dropped counted (the SDK's counts
    what its own bounded containers dropped)."""

    dropped = (0, 0)

    @property
    def dropped_attributes(self) -> int:
        return self.dropped[0]

    @property
    def dropped_events(self) -> int:
        return self.dropped[1]


_UNSET = Status(StatusCode.UNSET)


_PLAIN = frozenset((str, bool, int, float))
_STR = frozenset((str,))
_SAMPLED = int(TraceFlags.SAMPLED)
_LISTS = frozenset((list, tuple))


def _valid(key: str, value: object) -> AttributeValue | None:
    """``value`` as the SDK would store it (a sequence of one plain type as a tuple),
    None (logged, dropped) when it is not a valid attribute value."""
    if type(value) in _LISTS or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        # (cast, not assert: an isinstance of an ABC costs a call)
        items = cast(Sequence[str | bool | int | float | None], value)
        kinds = set(map(type, items))
        kinds.discard(type(None))
        if len(kinds) <= 1 and kinds <= _PLAIN:
            return tuple(items)
    _logger.warning("Invalid type %s for attribute %r value dropped", type(value).__name__, key)
    return None


class _CurrentSpan:
    """`LeanTracer.start_as_current_span`'s context manager: what the SDK's
    ``use_span(end_on_exit=True)`` does, without its generator."""

    __slots__ = ("_record", "_span", "_token")

    def __init__(self, span: Span, record: bool) -> None:
        self._span = span
        self._record = record
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        if _CURRENT is None:
            self._token = context_api.attach(set_span_in_context(self._span))
        else:  # what set_span_in_context and attach do, without their calls
            context = Context(_CURRENT.get())
            dict.__setitem__(context, _SPAN_KEY, self._span)  # (a Context refuses it)
            self._token = _CURRENT.set(context)
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        span = self._span
        if self._token is not None:
            if _CURRENT is None:
                context_api.detach(self._token)
            else:
                try:
                    _CURRENT.reset(self._token)
                except Exception as exc:  # as context_api.detach: logged, not raised
                    _detach_failed(exc)
        if isinstance(exc_val, Exception) and self._record and span.is_recording():
            _fail(span, exc_val)
        span.end()


def _fail(span: Span, error: Exception) -> None:
    """What a span made current records of an exception that left its block (as the
    SDK's ``use_span``): the exception, and an ERROR status."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _detach_failed(error: BaseException) -> None:
    _logger.error("Failed to detach context", exc_info=error)


def _link_records(links: Sequence[Link]) -> list[tuple[Any, ...]]:
    return [link_record(link) for link in links]


def _follows_parent(sampler: Sampler) -> bool:
    """Whether ``sampler`` (InsideTraces around it allowed: it defers every span with a
    valid parent) is the SDK's ParentBased with its default delegates, as every
    ``parentbased_*`` value of OTEL_TRACES_SAMPLER builds it: a child span is then
    recorded and sampled exactly when its parent is sampled."""
    if isinstance(sampler, InsideTraces):
        sampler = sampler.inner
    if not isinstance(sampler, ParentBased):
        return False
    defaults = {
        "_remote_parent_sampled": ALWAYS_ON,
        "_remote_parent_not_sampled": ALWAYS_OFF,
        "_local_parent_sampled": ALWAYS_ON,
        "_local_parent_not_sampled": ALWAYS_OFF,
    }
    return all(getattr(sampler, name, None) is value for name, value in defaults.items())


def _fixed_decisions(sampler: Sampler) -> tuple[Decision | None, bool, bool]:
    """What ``sampler`` decides without looking at a span's trace id, name or
    attributes, when it is built of the SDK's samplers that do (every ``always_*`` and
    ``parentbased_always_*`` value of OTEL_TRACES_SAMPLER, InsideTraces around it):
    the decision for a span with no valid parent (None: ask the sampler); whether a
    span with one gets that decision too (a static sampler; a parent-based one
    follows its parent, `_follows_parent`); and whether a client span with no parent
    is dropped whatever the rest says (InsideTraces)."""
    drops_client_roots = isinstance(sampler, InsideTraces)
    if isinstance(sampler, InsideTraces):
        sampler = sampler.inner
    if type(sampler) is StaticSampler:
        return sampler._decision, True, drops_client_roots
    if _follows_parent(sampler):
        root = getattr(sampler, "_root", None)
        if type(root) is StaticSampler:
            return root._decision, False, drops_client_roots
    return None, False, drops_client_roots


def _queue_emit(queue: Any) -> Callable[[Any], None]:
    """A batch processor's ``emit``: in C where steplog._span_speedups is built
    (`QueueEmit`: the same queue and wake-up, without the Python call and its
    ``os.getpid()`` per span; anything but a record queued with room, the processor's
    own ``emit``), else the processor's, as it is (one not shaped as the SDK's is
    too)."""
    if _speedups is not None:
        try:
            return cast(Callable[[Any], None], _speedups.QueueEmit(queue))
        except (AttributeError, TypeError, ValueError, OverflowError):
            pass
    return cast(Callable[[Any], None], queue.emit)


class LeanTracer(Tracer):
    """The tracer the roles span with: a provider's sampler, id generator, resource and
    span processors (so every OTEL_* setting and exporter applies as with the SDK's
    tracer), and `LeanSpan`s, which cost a fraction of the SDK's spans (see
    docs/observability.md, "What it costs"). A span the sampler does not record is
    a NonRecordingSpan, as with the SDK's tracer."""

    def __init__(self, provider: TracerProvider, scope: str = INSTRUMENTATION_SCOPE) -> None:
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.random_span_ids = type(self.ids) is RandomIdGenerator
        is_random = getattr(self.ids, "is_trace_id_random", None)
        self.random_ids = _RANDOM_TRACE_ID if is_random is not None and is_random() else 0
        self.resource = provider.resource
        self.follows_parent = _follows_parent(self.sampler)
        self.fixed, self.fixed_children, self.drops_client_roots = _fixed_decisions(self.sampler)
        # The provider's span processors (all of them, as the SDK's tracer uses them),
        # called as `_hooks` says.
        self.processor = provider._active_span_processor
        self._processors: object = None
        self.starts: tuple[Callable[..., None], ...] = ()
        self.takes_records: tuple[Callable[[SpanRecord], None], ...] = ()
        self.emits: tuple[Callable[[ReadableSpan], None], ...] = ()
        self.ends: tuple[Callable[[ReadableSpan], None], ...] = ()
        self._hooks()
        self.scope = InstrumentationScope(scope)
        # The (resource, scope) group of its spans' records (steplog.span_export).
        self.group = group_of(self.resource, self.scope)
        # The span limits of the OTEL_SPAN_*_LIMIT variables, as the SDK's spans have them.
        limits = SpanLimits()
        self.max_attributes = limits.max_span_attributes or sys.maxsize
        self.max_events = limits.max_events or sys.maxsize
        # How `start_child` samples a child of a sampled traceparent without the
        # sampler's calls: sampled with its parent (a parent-based sampler with its
        # default delegates) or always (a static sampler's RECORD_AND_SAMPLE); None:
        # the sampler decides (`start_span`).
        self.samples_children = self.follows_parent or (
            self.fixed is Decision.RECORD_AND_SAMPLE and self.fixed_children
        )
        # Its spans, their `with` blocks and `start_child`'s unparsed children, in C
        # where steplog._span_speedups is built (the same, for a fraction of the
        # instructions: docs/observability.md, "Session 22").
        fast = _speedups is not None
        self.span_type: type[LeanSpan] = _FastLeanSpan if fast else LeanSpan
        self._child: Callable[..., LeanSpan | None] | None = _speedups.child if fast else None
        self._local: Callable[..., LeanSpan | None] | None = _speedups.local_child if fast else None
        self._root: Callable[..., LeanSpan | None] | None = _speedups.root if fast else None
        # Whether `start_span` samples every new trace without the sampler's calls, its
        # ids the SDK's random ones (C's `root` draws them as RandomIdGenerator does).
        self.samples_roots = self.random_span_ids and self.fixed is Decision.RECORD_AND_SAMPLE
        self._current: Callable[[Span, bool], AbstractContextManager[Span]] = (
            _speedups.CurrentSpan if fast and _CURRENT is not None else _CurrentSpan
        )

    def _hooks(self) -> None:
        """What a span's start and end call, for the processors the provider has now:
        each ``on_start`` that does something (the batch and simple processors' do
        nothing); at a sampled span's end, a batch processor's queue (``emit``: what its
        ``on_end`` calls for a sampled span), given the span's record when its exporter
        takes records (``takes_records``: steplog.span_export's), else its ReadableSpan;
        any other processor's ``on_end``. A processor the provider gains later is picked
        up at the next span's start."""
        processors = getattr(self.processor, "_span_processors", None)
        self._processors = processors
        if processors is None:  # a multi-processor of another kind: call it as it is
            self.starts, self.takes_records, self.emits, self.ends = (
                (self.processor.on_start,),
                (),
                (),
                (self.processor.on_end,),
            )
            return
        starts, takes_records, emits, ends = [], [], [], []
        for processor in processors:
            if type(processor).on_start not in _NO_OP_STARTS:
                starts.append(processor.on_start)
            queue = getattr(processor, "_batch_processor", None)
            if (
                type(processor) is BatchSpanProcessor
                and queue is not None
                and hasattr(queue, "emit")
            ):
                exporter = getattr(queue, "_exporter", None)
                emit = _queue_emit(queue)
                if getattr(exporter, "takes_records", False):
                    takes_records.append(emit)
                else:
                    emits.append(emit)
            else:
                ends.append(processor.on_end)
        self.starts, self.takes_records, self.emits, self.ends = (
            tuple(starts),
            tuple(takes_records),
            tuple(emits),
            tuple(ends),
        )

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if context is None:
            context = context_api.get_current() if _CURRENT is None else _CURRENT.get()
        current = context.get(_SPAN_KEY)
        if self._local is not None and not links and not start_time:
            # In C, as `start_child`'s children are: a child of a span of this process (a
            # request's, the attempt's that a handler's own spans start under) sampled
            # with it, and a new trace (a request's span, when no traceparent came)
            # under a tracer that samples every root.
            span = None
            if type(current) is self.span_type:
                span = self._local(self, self.span_type, current, name, kind, attributes, False)
            elif (
                current is None
                and self._root is not None
                and self.samples_roots
                and not (kind is SpanKind.CLIENT and self.drops_client_roots)
            ):
                span = self._root(self, self.span_type, name, kind, attributes, False)
            if span is not None:
                return span
        if type(current) in _SPAN_TYPES:  # (else the API's check: not a Span, no parent)
            parent: SpanContext | None = current.get_span_context()  # type: ignore[attr-defined]
        else:
            parent = get_current_span(context).get_span_context()
        # A SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state,
        # is_valid).
        if parent is not None and parent[5]:
            trace_id = parent[0]
            random = parent[3] & _RANDOM_TRACE_ID
        else:
            parent = None
            trace_id = self.ids.generate_trace_id()
            random = self.random_ids
        links = links or ()
        trace_state: TraceState | None
        if parent is not None and self.follows_parent:
            # What a parent-based sampler with its default delegates decides (and the
            # trace state it keeps), without its calls: a child is sampled with its parent.
            sampled = parent[3] & TraceFlags.SAMPLED
            record = bool(sampled)
            trace_state = parent[4]
        elif self.fixed is not None and (parent is None or self.fixed_children):
            # What a static sampler decides (with InsideTraces around it), without its
            # calls: the same for every span, the parent's trace state kept.
            if parent is None:
                trace_state = None
                decision = (
                    Decision.DROP
                    if kind is SpanKind.CLIENT and self.drops_client_roots
                    else self.fixed
                )
            else:
                trace_state = parent[4]
                decision = self.fixed
            sampled = TraceFlags.SAMPLED if decision is Decision.RECORD_AND_SAMPLE else 0
            record = decision is not Decision.DROP
        else:
            result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            sampled = TraceFlags.SAMPLED if result.decision in _SAMPLED_DECISIONS else 0
            record = result.decision is not Decision.DROP
            trace_state = result.trace_state
            # As the SDK's tracer: the span has the attributes the sampler returns (the
            # SDK's samplers return the ones they were given).
            attributes = result.attributes
        span_id = self._span_id()
        # The SpanContext its __new__ builds, without the call.
        span_context = tuple.__new__(
            SpanContext,
            (
                trace_id,
                span_id,
                False,
                _FLAGS[random | sampled],
                _NO_TRACE_STATE if trace_state is None else trace_state,
                0 < trace_id <= _MAX_TRACE_ID and 0 < span_id <= _MAX_SPAN_ID,
            ),
        )
        if not record:
            return NonRecordingSpan(span_context)
        recorded: dict[str, AttributeValue] = {}
        span = self.span_type(
            self,
            name,
            kind,
            f"{trace_id:032x}",
            span_id,
            span_context[3] & 0xFF,  # (a plain int: msgpack cannot encode a TraceFlags)
            span_context[4],
            parent,
            recorded,
            links,
            start_time or time.time_ns(),
            span_context,
        )
        if attributes:
            if len(attributes) <= self.max_attributes and _PLAIN.issuperset(
                map(type, attributes.values())
            ):
                recorded.update(attributes)  # (valid by construction: steplog's own)
            else:
                span.set_attributes(attributes)
        if self._processors is not getattr(self.processor, "_span_processors", None):
            self._hooks()
        for on_start in self.starts:
            on_start(span, parent_context=context)
        return span

    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> AbstractContextManager[Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return self._current(span, record_exception and set_status_on_exception)

    def start_child(
        self,
        name: str,
        traceparent: str,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, AttributeValue] | None = None,
        own: bool = False,
    ) -> AbstractContextManager[Span]:
        """`start_as_current_span` of a child of the span ``traceparent`` names (a new
        trace when it is empty or not a valid W3C traceparent), for a role that reads
        it from a message (engine.loops.tracing.start_child). A traceparent steplog
        wrote (version 00, lower-case hex) of a sampled span, under a sampler that
        samples its children (`samples_children`), is not parsed into a context: the
        span keeps its trace id as hex and the traceparent itself as its parent (what
        its record, its own traceparent and the export process read). Anything else
        goes through `start_span`. ``own``: ``attributes`` is steplog's own dict of
        plain values (str, bool, int, float), which the span takes as it is."""
        child = self._child
        span = (
            child(self, self.span_type, name, traceparent, kind, attributes, own)
            if child is not None
            else self._unparsed_child(name, traceparent, kind, attributes, own)
        )
        if span is None:
            return self.start_as_current_span(name, _parent_context(traceparent), kind, attributes)
        return self._current(span, True)

    def _unparsed_child(
        self,
        name: str,
        traceparent: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue] | None,
        own: bool = False,
    ) -> LeanSpan | None:
        """`start_child`'s span when its traceparent need not be parsed, else None
        (steplog._span_speedups's ``child`` where it is built)."""
        match = OWN_TRACEPARENT(traceparent) if traceparent else None
        if (
            match is None
            or not self.samples_children
            or self.starts
            or self._processors is not getattr(self.processor, "_span_processors", None)
        ):
            return None
        trace, parent_id, parent_flags = match[1], match[2], _HEX_FLAGS[match[3]]
        if (
            not parent_flags & _SAMPLED
            or trace == _ZERO_TRACE
            or parent_id == _ZERO_SPAN
            or (
                attributes
                and (
                    len(attributes) > self.max_attributes
                    or (not own and not _PLAIN.issuperset(map(type, attributes.values())))
                )
            )
        ):
            return None
        span_id = self._span_id()
        if not 0 < span_id <= _MAX_SPAN_ID:  # (not valid: as `start_span` makes it)
            return None
        return self.span_type(
            self,
            name,
            kind,
            trace,
            span_id,
            parent_flags & (_SAMPLED | _RANDOM_TRACE_ID),
            _NO_TRACE_STATE,
            traceparent,
            # (a copy, as the SDK's: the caller may reuse its own; steplog's own is new)
            (attributes if own else dict(attributes)) if attributes else {},
            (),
            time.time_ns(),
        )

    def _span_id(self) -> int:
        """A new span's id, from the provider's id generator (RandomIdGenerator's
        generate_span_id done here, without its call)."""
        if not self.random_span_ids:
            return self.ids.generate_span_id()
        span_id = getrandbits(64)
        while not span_id:
            span_id = getrandbits(64)
        return span_id


_SAMPLED_DECISIONS = frozenset((Decision.RECORD_AND_SAMPLE,))
# The on_start of the SDK's processors that do nothing at a span's start.
_NO_OP_STARTS = frozenset(
    (SpanProcessor.on_start, BatchSpanProcessor.on_start, SimpleSpanProcessor.on_start)
)
# W3C trace context level 2's "random trace id" flag, which the SDK sets (since 1.39)
# on the traces it begins with random ids, and its children inherit.
_RANDOM_TRACE_ID: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_FLAGS = {f: TraceFlags(f) for f in range(4)}
_NO_TRACE_STATE = TraceState.get_default()
_MAX_TRACE_ID = (1 << 128) - 1
_MAX_SPAN_ID = (1 << 64) - 1
_HEX_FLAGS = {f"{f:02x}": f for f in range(256)}
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

if _speedups is not None:

    class _FastLeanSpan(_speedups.SpanCore, LeanSpan):
        """A LeanSpan whose fields, and the methods every span calls (`end`, `record`,
        `add_own_event`, `set_own_attributes`), are steplog._span_speedups's."""

    _speedups.configure(
        current_var=_CURRENT,
        span_key=_SPAN_KEY,
        context_type=Context,
        unset_status=_UNSET,
        unset_record=(_UNSET.status_code._value_, _UNSET.description),
        trace_state=_NO_TRACE_STATE,
        getrandbits=getrandbits,
        fail=_fail,
        detach_failed=_detach_failed,
        link_records=_link_records,
        sampled=_SAMPLED,
        random=_RANDOM_TRACE_ID,
    )
    _SPAN_TYPES = frozenset((LeanSpan, _FastLeanSpan, NonRecordingSpan))
else:  # pragma: no cover (where it is not built)
    _SPAN_TYPES = frozenset((LeanSpan, NonRecordingSpan))
