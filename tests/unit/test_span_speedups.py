"""steplog._span_speedups (C) starts, makes current and ends steplog's spans as
steplog.tracing's Python does (tests/unit/test_otlp.py runs every test of spans with
both, against the SDK's spans); here, what only C can get wrong: that it is built, that
its children of any traceparent, its children of a current span and its new traces are
the Python's, that a span it made is freed, and that a span missing a field raises
rather than crashes. Where a C compiler is, `make
install` builds it."""

from __future__ import annotations

import contextvars
import gc
import logging
import os
import random
import shutil
import sysconfig
import threading
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from engine.tracecontext import current_span
from steplog import tracing
from steplog.tracing import InsideTraces, LeanTracer

speedups = tracing._speedups
needs_speedups = pytest.mark.skipif(speedups is None, reason="built only with a C compiler")
REMOTE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# Every field of a span but the two that differ from span to span (its id, its start).
FIELDS = (
    "_tracer _name _kind _trace _flags _trace_state _parent _attributes _links _context "
    "_end_time _events _status _dropped_attributes _dropped_events"
).split()


def test_it_is_built_where_a_c_compiler_is() -> None:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is not None:
        assert speedups is not None, "setup.py's optional extension did not build"
    else:  # (the install went on without it: steplog.tracing spans in Python)
        assert speedups is None


def _tracer() -> LeanTracer:
    return LeanTracer(TracerProvider())


def _fields(span: Any, *leaving_out: str) -> dict[str, object]:
    return {name: getattr(span, name) for name in FIELDS if name not in leaving_out}


# A span's attributes as a caller may give them: none, plain values, a list (which the
# Python must check).
ATTRIBUTES = st.none() | st.dictionaries(
    st.text(max_size=4),
    st.integers() | st.text(max_size=4) | st.booleans() | st.floats() | st.just([1]),
    max_size=3,
)


def _traceparents() -> st.SearchStrategy[str]:
    """Traceparents steplog writes (most of them, so that both answers are common), and
    near misses: other versions, upper case, zero ids, unsampled flags, other lengths
    and separators, text that is not hex, non-ASCII text."""

    def ids(n: int) -> st.SearchStrategy[str]:
        return st.integers(1, 16**n - 1).map(lambda v: f"{v:0{n}x}")

    written = st.builds(
        lambda t, p, f: f"00-{t}-{p}-{f:02x}", ids(32), ids(16), st.sampled_from([1, 3])
    )

    def near(n: int) -> st.SearchStrategy[str]:
        return st.one_of(
            ids(n), ids(n).map(str.upper), st.just("0" * n), st.text(min_size=n, max_size=n)
        )

    shaped = st.builds(
        lambda v, t, p, f, sep: sep.join((v, t, p, f)),
        st.sampled_from(["00", "01", "ff", "0"]),
        near(32),
        near(16),
        st.sampled_from(["01", "00", "03", "02", "0F", "f1"]) | near(2),
        st.sampled_from(["-", "-", "_"]),
    )
    return st.one_of(written, written, shaped, shaped, st.text(max_size=60), st.just(REMOTE + "\n"))


@needs_speedups
@settings(max_examples=400, deadline=None)
@given(
    traceparent=_traceparents(),
    attributes=ATTRIBUTES,
    own=st.booleans(),
)
def test_its_children_are_the_pythons(
    traceparent: str, attributes: dict[str, Any] | None, own: bool
) -> None:
    # The C `child` takes a traceparent exactly when the Python `_unparsed_child` does,
    # and makes the same span of it (C fields, Python's in the instance dict).
    tracer = _tracer()
    fast = tracer._child
    assert fast is not None
    made = fast(tracer, tracer.span_type, "n", traceparent, SpanKind.CONSUMER, attributes, own)
    tracer.span_type = tracing.LeanSpan
    reference = tracer._unparsed_child("n", traceparent, SpanKind.CONSUMER, attributes, own)
    assert (made is None) == (reference is None)
    if made is not None and reference is not None:
        assert type(made) is tracing._FastLeanSpan
        assert _fields(made) == _fields(reference)
        assert 0 < made._span_id < 2**64
        if own and attributes:  # (steplog's own dict, kept as it is)
            assert made._attributes is attributes


SAMPLERS = {
    "parent-based": lambda: ParentBased(ALWAYS_ON),
    "always on": lambda: ALWAYS_ON,
    "ratio": lambda: TraceIdRatioBased(0.5),
}


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    flags=st.sampled_from([0, 1, 2, 3]),
    state=st.sampled_from([[], [("k", "v")]]),
    attributes=ATTRIBUTES,
    kind=st.sampled_from(list(SpanKind)),
    sampler=st.sampled_from(sorted(SAMPLERS)),
    seed=st.integers(0, 2**32),
)
def test_its_children_of_a_current_span_are_the_pythons(
    flags: int,
    state: list[tuple[str, str]],
    attributes: dict[str, Any] | None,
    kind: SpanKind,
    sampler: str,
    seed: int,
) -> None:
    # `start_span` under a current span of this process (a request's, an attempt's):
    # C's `local_child` makes the span the Python makes, or leaves it to the Python.
    tracer = LeanTracer(TracerProvider(sampler=SAMPLERS[sampler]()))
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState(state),
    )
    parent = tracer.start_span("p", set_span_in_context(NonRecordingSpan(remote)))
    context = set_span_in_context(parent)
    random.seed(seed)  # (both draw the new span's id from it)
    made = tracer.start_span("c", context, kind, attributes)
    tracer._local = None
    random.seed(seed)
    reference = tracer.start_span("c", context, kind, attributes)
    assert type(made) is type(reference)
    assert made.get_span_context() == reference.get_span_context()
    if isinstance(made, tracing.LeanSpan):
        # (every field but the context, which C builds when first asked for)
        assert _fields(made, "_context") == _fields(reference, "_context")
        assert made.parent == parent.get_span_context()
        assert made.parent is not None and not made.parent.is_remote
        if attributes:  # (a copy: the caller may reuse its dict)
            assert made._attributes is not attributes


@needs_speedups
@settings(max_examples=200, deadline=None)
@given(
    attributes=ATTRIBUTES,
    kind=st.sampled_from(list(SpanKind)),
    sampler=st.sampled_from(["parentbased_always_on", "always_on", "always_off", "inside"]),
    seed=st.integers(0, 2**32),
)
def test_its_new_traces_are_the_pythons(
    attributes: dict[str, Any] | None, kind: SpanKind, sampler: str, seed: int
) -> None:
    # `start_span` with no current span (a request's, when no traceparent came): C's
    # `root` makes the span the Python makes (the same ids from the same draws), or
    # leaves it to the Python (a sampler it must ask, a client root InsideTraces drops).
    chosen = {
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "inside": InsideTraces(ParentBased(ALWAYS_ON)),
    }[sampler]
    tracer = LeanTracer(TracerProvider(sampler=chosen))
    random.seed(seed)
    made = tracer.start_span("r", Context(), kind, attributes)
    tracer._local = tracer._root = None
    random.seed(seed)
    reference = tracer.start_span("r", Context(), kind, attributes)
    assert type(made) is type(reference)
    assert made.get_span_context() == reference.get_span_context()
    if isinstance(made, tracing.LeanSpan):
        # (every field but the context, which C builds when first asked for)
        assert _fields(made, "_context") == _fields(reference, "_context")
        assert made.parent is None and len(made._trace) == 32


@needs_speedups
def test_local_children_are_made_in_c_where_they_can_be() -> None:
    tracer = _tracer()  # (the SDK's default sampler: parent-based, always on)
    with tracer.start_as_current_span("request", Context()) as request:
        assert type(request) is tracing._FastLeanSpan and request._context is None
        with tracer.start_as_current_span("decide", attributes={"a": 1}) as decide:
            assert type(decide) is tracing._FastLeanSpan
            assert decide._parent is request.get_span_context()
            assert decide._context is None  # (C's: built when first asked for)
    assert [s._end_time is not None for s in (request, decide)] == [True, True]


@needs_speedups
def test_a_span_and_its_block_are_freed_once_ended() -> None:
    tracer = _tracer()
    with tracer.start_child("n", REMOTE, SpanKind.CONSUMER, {"a": 1}, True) as span:
        assert type(span) is tracing._FastLeanSpan
        assert current_span() is span
    gone = weakref.ref(span)
    del span
    assert gone() is None
    # One in a reference cycle (through its instance dict) is collected.
    with tracer.start_as_current_span("m") as span:
        span.itself = span  # type: ignore[attr-defined]
    gone = weakref.ref(span)
    del span
    gc.collect()
    assert gone() is None


@needs_speedups
def test_a_span_missing_a_field_raises_and_does_not_crash() -> None:
    assert speedups is not None
    span = tracing._FastLeanSpan.__new__(tracing._FastLeanSpan)
    calls = (span.end, span.record, span.is_recording, lambda: span.traceparent)
    for call in (*calls, lambda: span.set_own_attributes({})):
        with pytest.raises(AttributeError):
            call()
    with pytest.raises(AttributeError):
        span.add_own_event("e", {})
    with pytest.raises(TypeError):
        speedups.child(_tracer(), object, "n", REMOTE, SpanKind.CONSUMER, None, True)


def _outcome(read: Any) -> object:
    try:
        return read()
    except Exception as error:  # (both must fail alike)
        return type(error)


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    trace=st.integers(0, 16**32 - 1).map(lambda v: f"{v:032x}")
    | st.text(max_size=6)
    | st.text(min_size=32, max_size=32),
    span_id=st.integers(0, 2**64 - 1) | st.integers(-(2**70), 2**70),
    flags=st.integers(0, 255) | st.integers(-300, 300) | st.just(True),
    context=st.none() | st.booleans().map(lambda valid: (1, 2, False, 1, None, valid)),
)
def test_its_traceparent_is_the_pythons(
    trace: str, span_id: int, flags: int, context: tuple[Any, ...] | None
) -> None:
    # C's `traceparent` (what a message carries to the span's children) writes what
    # the Python's does, for any value of the fields it reads, or fails alike.
    span = tracing._FastLeanSpan.__new__(tracing._FastLeanSpan)
    span._trace, span._span_id, span._flags, span._context = trace, span_id, flags, context
    python = tracing.LeanSpan.traceparent.fget  # type: ignore[attr-defined]
    assert _outcome(lambda: span.traceparent) == _outcome(lambda: python(span))


def _processor(**sizes: int) -> Any:
    """A batch processor's queue (the SDK's), exporting to memory; a batch leaves only
    when one is full (or at a flush)."""
    exporter = InMemorySpanExporter()
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000, **sizes)
    return processor._batch_processor, exporter


@needs_speedups
def test_queue_emit_queues_and_wakes_as_the_processors_emit() -> None:
    assert speedups is not None
    queue, exporter = _processor(max_export_batch_size=4)
    emit = speedups.QueueEmit(queue)
    for record in range(3):
        emit(record)
    assert list(queue._queue) == [2, 1, 0] and not queue._worker_awaken.is_set()
    emit(3)  # (a batch waits: the processor's thread is woken and sends it)
    for _ in range(500):
        if exporter.get_finished_spans():
            break
        threading.Event().wait(0.01)
    assert list(exporter.get_finished_spans()) == [0, 1, 2, 3]
    queue.shutdown()


@needs_speedups
def test_queue_emit_leaves_a_full_queue_and_a_shut_down_processor_to_its_emit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert speedups is not None
    queue, _ = _processor(max_queue_size=2, max_export_batch_size=2)
    queue._worker_awaken.set()  # (its thread busy: nothing leaves meanwhile)
    queue._export_lock.acquire()
    emit = speedups.QueueEmit(queue)
    with caplog.at_level(logging.WARNING):
        for record in range(3):
            emit(record)
    # The SDK's emit: a warning, and the oldest record gives way.
    assert "Queue full" in caplog.text and list(queue._queue) == [2, 1]
    queue._export_lock.release()
    queue.shutdown()
    emit(4)  # (after shutdown: ignored, as the SDK's emit ignores it)
    assert 4 not in queue._queue


@needs_speedups
def test_queue_emit_in_a_forked_child_is_the_processors_emit() -> None:
    # After a fork the SDK starts its processor over (its queue emptied, a new thread
    # and Event); C hands the child's records to its emit, and they are sent there.
    assert speedups is not None
    queue, exporter = _processor(max_export_batch_size=1)
    queue._worker_awaken.set()  # (its thread busy: the parent's record stays queued)
    queue._export_lock.acquire()
    emit = speedups.QueueEmit(queue)
    emit("parent")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without pytest's teardown
        try:
            emit("child")
            for _ in range(500):
                if exporter.get_finished_spans():
                    break
                threading.Event().wait(0.01)
            os.write(write, repr(list(exporter.get_finished_spans())).encode())
        finally:
            os._exit(0)
    os.close(write)
    told = os.read(read, 1000)
    os.close(read)
    os.waitpid(pid, 0)
    assert told == b"['child']"
    assert list(queue._queue) == ["parent"]
    queue._export_lock.release()
    queue.shutdown()


@needs_speedups
def test_the_tracer_queues_records_through_queue_emit() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    exporter.takes_records = True  # type: ignore[attr-defined]
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = LeanTracer(provider)
    assert [type(take).__name__ for take in tracer.takes_records] == ["QueueEmit"]
    provider.shutdown()


@pytest.mark.parametrize("spans_in", ["C", "Python"])
def test_a_context_that_cannot_be_reset_is_logged_and_the_span_still_ends(
    spans_in: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Entered in one context and left in another (as a block split across tasks could
    # be), the reset fails: logged as OpenTelemetry's detach logs it, not raised.
    if spans_in == "Python":
        monkeypatch.setattr(tracing, "_speedups", None)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    block = LeanTracer(provider).start_child("n", REMOTE, SpanKind.CONSUMER, {}, True)
    contextvars.copy_context().run(block.__enter__)
    with caplog.at_level(logging.ERROR, logger="steplog.tracing"):
        block.__exit__(None, None, None)
    assert [r.getMessage() for r in caplog.records] == ["Failed to detach context"]
    assert caplog.records[0].exc_info is not None
    assert [s.name for s in exporter.get_finished_spans()] == ["n"]
