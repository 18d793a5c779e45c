"""The current OpenTelemetry span, read without the API's look-ups.

OpenTelemetry's ``get_current_span()`` goes through two functions of its context API
and an ``isinstance`` check against the abstract ``Span`` class, which Python runs as
a call of ``ABCMeta.__instancecheck__``: about a fifth of a decision span's cost
measured alone. The engine asks for the current span once or twice per decision
(its append event, its attributes), the API once per start, every log line once.
Here the contextvar that holds OpenTelemetry's current context is read directly (when
the runtime context is the default one), and a value's class is checked against
``Span`` once, then remembered. It lives in the engine, below the roles and the API
that use it, like the log context.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import INVALID_SPAN, Span, get_current_span
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.util.types import AttributeValue


def _context_var() -> ContextVar[Context] | None:
    """The contextvar that holds OpenTelemetry's current context, when it is the
    default runtime context (OTEL_PYTHON_CONTEXT unset or "contextvars_context"):
    spans are made current and read through it directly. None for another runtime
    context (then the API's functions are called)."""
    runtime = getattr(context_api, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None
    current = getattr(runtime, "_current_context", None)
    return current if isinstance(current, ContextVar) else None


CURRENT = _context_var()
# The classes of the values found current that are Spans (checked once each).
_SPAN_CLASSES: set[type] = set()


def current_span() -> Span:
    """What ``opentelemetry.trace.get_current_span()`` returns: the current context's
    span, INVALID_SPAN when there is none (or what is there is not a Span)."""
    if CURRENT is None:
        return get_current_span()
    span = CURRENT.get().get(_SPAN_KEY)
    if span is None:
        return INVALID_SPAN
    if type(span) in _SPAN_CLASSES:
        return span  # type: ignore[return-value]
    if isinstance(span, Span):
        _SPAN_CLASSES.add(type(span))
        return span
    return INVALID_SPAN


def add_own_event(
    span: Span, name: str, attributes: Mapping[str, AttributeValue], timestamp: int | None = None
) -> None:
    """``span.add_event`` for an event of steplog's own: ``attributes`` a new dict of
    plain values (str, bool, int, float). steplog's spans (steplog.tracing.LeanSpan)
    keep it as it is, without the copy and the checks that ``add_event`` makes of a
    caller's attributes; any other span gets ``add_event``."""
    own = getattr(span, "add_own_event", None)
    if own is not None:
        own(name, attributes, timestamp)
    else:
        span.add_event(name, attributes, timestamp)


def set_own_attributes(span: Span, attributes: Mapping[str, AttributeValue]) -> None:
    """``span.set_attributes`` for attributes of steplog's own (values valid as the SDK
    stores them: str, bool, int, float, or tuples of one of them), which steplog's spans
    add without checking each (see `add_own_event`)."""
    own = getattr(span, "set_own_attributes", None)
    if own is not None:
        own(attributes)
    else:
        span.set_attributes(attributes)


def traceparent_of(span: Span) -> str:
    """``span``'s W3C traceparent (``00-<trace id>-<span id>-<flags>``), "" for a span
    that is not valid (tracing off)."""
    own = getattr(span, "traceparent", None)
    if own is not None:  # (steplog's spans write theirs without building their context)
        return str(own)
    # A SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state,
    # is_valid).
    trace_id, span_id, _, flags, _, valid = span.get_span_context()
    if not valid:
        return ""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
