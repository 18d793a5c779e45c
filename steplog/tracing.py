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
and the batch processor (``OTEL_BSP_*``).

The OTLP exporters are the SDK's, encoding with `steplog.otlp` (the same bytes as
the SDK's encoder, at a third of its cost: export runs in this process, beside the
engine).

The provider is passed to whoever spans (the loops, the service, the API) as a
``Tracer``; it is never installed as OpenTelemetry's global provider, so tests can
give each running steplog its own (e.g. with an in-memory exporter).
`instrument_drivers` adds the maintained asyncpg and Redis instrumentations (one span
per query or command; with ``STEPLOG_TRACE_DRIVERS=true``, as they more than double
the cost of tracing), whose spans only appear inside a trace: see `InsideTraces`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from steplog.otlp import grpc_span_exporter, use_fast_encoding
from steplog.settings import Settings

SERVICE = "steplog"
INSTRUMENTATION_SCOPE = "steplog"


class InsideTraces(Sampler):
    """Drops a client span (a database query, a Redis command) that would begin a trace
    of its own, and defers every other decision to ``inner`` (the configured sampler).
    The drivers' instrumentations span every call, the idle polls of the relay, the
    timers and the consumers included: without this, each would be a trace of its own,
    several per second per process, none about an execution."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

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
        return self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"InsideTraces{{{self._inner.get_description()}}}"


def _exporter(name: str, protocol: str) -> SpanExporter:
    """The named exporter; OTLP ones encode with steplog.otlp (the same bytes as the
    SDK's encoder, at a third of its cost)."""
    if name == "console":
        return ConsoleSpanExporter()
    if protocol == "grpc":
        return grpc_span_exporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    use_fast_encoding()
    return HttpExporter()


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
        exporter = _exporter(name, settings.otel_exporter_otlp_protocol)
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
