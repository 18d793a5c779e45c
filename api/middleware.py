"""Request-id and observability middlewares (the error middleware is in problems.py).

Order in the app, outermost first: request_id -> trace (with tracing on) ->
observe -> errors -> handler, so every response (errors included) carries
X-Request-ID (and traceparent), metrics and the access log see the final status,
and the access line carries the request's trace and span ids.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from api.keys import METRICS
from api.metrics import route_label
from api.problems import Handler
from engine.logcontext import execution_id_var, request_id_var
from engine.tracecontext import current_span, traceparent_of

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is echoed only when it is short and plain (it goes into logs and headers).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

TRACEPARENT_HEADER = "traceparent"

access_log = logging.getLogger("steplog.api.access")
_propagator = TraceContextTextMapPropagator()
_NEW_TRACE = Context()  # (empty: what extract gives when no traceparent came)


def request_traceparent() -> str:
    """The W3C traceparent of the current request's span ("" with tracing off): what
    a start records in ExecutionStarted, so the execution's spans join the request's
    trace."""
    return traceparent_of(current_span())


def trace_middleware(tracer: Tracer) -> Middleware:
    """A server span per request, continuing the caller's W3C ``traceparent`` (and
    ``tracestate``) when it sends a valid one, else beginning a new trace (an invalid
    one is ignored, as W3C Trace Context asks: never a 4xx). The response's
    ``traceparent`` header names the request's span, so a client learns the trace id
    of the execution it started."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # No traceparent (most requests): a new trace, as the propagator would say after
        # its look-ups.
        parent = (
            _propagator.extract(request.headers)
            if TRACEPARENT_HEADER in request.headers
            else _NEW_TRACE
        )
        route = route_label(request)
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
            },
        ) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            if not response.prepared:
                response.headers[TRACEPARENT_HEADER] = traceparent_of(span)
            return response

    return middleware


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take X-Request-ID (when plain) or make one (uuid4 hex); expose it in the
    logging contextvar for the request and echo it in the response header."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    # aiohttp serves a keep-alive connection's requests in one task: reset both
    # vars so nothing leaks into the next request.
    rid_token = request_id_var.set(request_id)
    eid_token = execution_id_var.set(None)
    try:
        response = await handler(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        execution_id_var.reset(eid_token)
        request_id_var.reset(rid_token)


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time each request by route template and status; log one
    access line."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        route = route_label(request)
        request.app[METRICS].observe(request.method, route, status, elapsed)
        access_log.info(
            "%s %s %d",
            request.method,
            request.path,
            status,
            extra={"route": route, "duration_ms": round(elapsed * 1000, 2)},
        )
