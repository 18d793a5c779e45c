"""OTLP export from a child process (steplog.span_export), against a real OTLP/HTTP
receiver: the child runs from the start, every span of every batch arrives, the child
stops when its pipe closes (the provider's shutdown) after sending what it read,
shrugs off the SIGTERM a supervisor sends the process group, and a child that died is
replaced at the next batch."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from steplog.settings import Settings
from steplog.span_export import ChildProcessExporter
from steplog.tracing import LeanTracer, tracer_provider


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[str]]]:
    """An OTLP/HTTP receiver on loopback: its endpoint, and the names of the spans it
    received so far."""
    names: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            names.extend(
                span.name
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", names
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def exporting_through_a_child(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[TracerProvider, ChildProcessExporter, LeanTracer, list[str]]]:
    """A tracer provider as `OTEL_TRACES_EXPORTER=otlp` builds it, exporting (through its
    child process) to a receiver: the provider, its exporter, a tracer over it and the
    names of the spans received so far."""
    with otlp_receiver() as (endpoint, names):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        provider = tracer_provider(Settings.from_env({"OTEL_TRACES_EXPORTER": "otlp"}))
        assert provider is not None
        (processor,) = provider._active_span_processor._span_processors
        assert isinstance(processor, BatchSpanProcessor)
        exporter = processor.span_exporter
        assert isinstance(exporter, ChildProcessExporter)
        yield provider, exporter, LeanTracer(provider), names


def test_every_span_reaches_the_receiver_through_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with exporting_through_a_child(monkeypatch) as (provider, exporter, tracer, names):
        # Started with the exporter (its imports paid at start-up, not by the first spans).
        child = exporter._child
        assert child is not None and child.poll() is None
        for i in range(1200):  # two batches of 512 and the rest at shutdown
            with tracer.start_as_current_span(f"span {i}", attributes={"i": i}):
                pass
        provider.shutdown()
        assert sorted(names) == sorted(f"span {i}" for i in range(1200))
        assert exporter._child is None  # stopped, and waited for


def test_the_child_outlives_sigterm_and_is_replaced_when_it_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with exporting_through_a_child(monkeypatch) as (provider, exporter, tracer, names):

        def batch(name: str) -> None:
            with tracer.start_as_current_span(name):
                pass
            assert provider.force_flush()

        def arrived(expected: list[str]) -> None:
            deadline = time.monotonic() + 30
            while names != expected and time.monotonic() < deadline:
                time.sleep(0.01)
            assert names == expected

        batch("first")
        child = exporter._child
        assert child is not None
        arrived(["first"])  # (the child is up: it ignores SIGTERM from then on)
        os.kill(child.pid, signal.SIGTERM)  # ignored: it stops when its pipe closes
        batch("second")
        assert exporter._child is child and child.poll() is None
        arrived(["first", "second"])
        child.kill()  # (what a killed child had read and not sent is lost)
        child.wait()
        batch("third")  # another child
        assert exporter._child is not None and exporter._child is not child
        provider.shutdown()
        assert names == ["first", "second", "third"]


def test_the_setting_keeps_export_in_the_process() -> None:
    settings = Settings.from_env(
        {"OTEL_TRACES_EXPORTER": "otlp", "STEPLOG_TRACE_EXPORT_IN_PROCESS": "true"}
    )
    assert settings.trace_export_in_process
    provider = tracer_provider(settings)
    assert provider is not None
    (processor,) = provider._active_span_processor._span_processors  # type: ignore[attr-defined]
    assert not isinstance(processor.span_exporter, ChildProcessExporter)
    provider.shutdown()
    with pytest.raises(ValueError, match="STEPLOG_TRACE_EXPORT_IN_PROCESS"):
        Settings.from_env({"STEPLOG_TRACE_EXPORT_IN_PROCESS": "sometimes"})


def test_in_the_process_the_exporter_takes_the_records_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exporter in the process is given the records steplog's spans end as, as the
    # export process is, and sends every span of them.
    with otlp_receiver() as (endpoint, names):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        settings = Settings.from_env(
            {"OTEL_TRACES_EXPORTER": "otlp", "STEPLOG_TRACE_EXPORT_IN_PROCESS": "true"}
        )
        provider = tracer_provider(settings)
        assert provider is not None
        tracer = LeanTracer(provider)
        assert len(tracer.takes_records) == 1 and not tracer.emits
        for i in range(600):  # a batch of 512 and the rest at shutdown
            with tracer.start_as_current_span(f"span {i}", attributes={"i": i}):
                pass
        provider.shutdown()
        assert sorted(names) == sorted(f"span {i}" for i in range(600))


def test_the_proxy_the_environment_names_still_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter reads the environment's proxy settings once, not at every batch
    (steplog.otlp.pin_environment): a collector behind a proxy is still reached through
    it. The receiver is the proxy here; the endpoint's host does not resolve."""
    with otlp_receiver() as (receiver, names):
        for name in ("HTTP_PROXY", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", receiver.removesuffix("/v1/traces"))
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector.invalid:4318/v1/traces"
        )
        provider = tracer_provider(Settings.from_env({"OTEL_TRACES_EXPORTER": "otlp"}))
        assert provider is not None
        with LeanTracer(provider).start_as_current_span("proxied"):
            pass
        provider.shutdown()
        assert names == ["proxied"]
