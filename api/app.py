"""The aiohttp application: `create_app(commands, queries, config)`.

The API talks to two facades only: the command side (`EngineService`) and the
query side (`Queries`), both built and owned by the caller (steplog/), which
also closes what they use; the app reaches them through typed AppKeys. Request
bodies are capped at config.max_payload_bytes plus a small envelope allowance
(aiohttp answers 413 beyond that); routes check the definition and the
execution input against max_payload_bytes itself.

Middlewares, outermost first: request id -> trace (with a tracer) -> observe (metrics, access log) ->
CORS preflight -> errors (problem+json) -> body (415, body read deadline) ->
handler; every response gets the headers of api/hygiene.py. The contract of
every route is published at GET /v1/openapi.json and /docs (api/openapi.py).
Serve it with api.server.HardenedAppRunner for the connection limits.
"""

from __future__ import annotations

from aiohttp import web
from opentelemetry.trace import Tracer

from api import executions, feed, health, openapi, stats, workflows
from api.config import ApiConfig
from api.hygiene import body_middleware, cors_middleware, on_response_prepare
from api.keys import COMMANDS, CONFIG, METRICS, QUERIES
from api.metrics import HttpMetrics
from api.middleware import observe_middleware, request_id_middleware, trace_middleware
from api.problems import error_middleware
from engine.service import EngineService
from projections.queries import Queries

# Room for the JSON around an input of exactly max_payload_bytes ({"input": ..., "name": ...}).
ENVELOPE_BYTES = 1024


def create_app(
    commands: EngineService, queries: Queries, config: ApiConfig, *, tracer: Tracer | None = None
) -> web.Application:
    """Build the API application; nothing in it closes what it was given. ``tracer``
    (None: tracing off) spans each request (api.middleware.trace_middleware)."""
    tracing = [trace_middleware(tracer)] if tracer is not None else []
    app = web.Application(
        client_max_size=max(config.max_payload_bytes, config.max_definition_bytes) + ENVELOPE_BYTES,
        middlewares=[
            request_id_middleware,
            *tracing,
            observe_middleware,
            cors_middleware,
            error_middleware,
            body_middleware,
        ],
    )
    app.on_response_prepare.append(on_response_prepare)
    app[COMMANDS] = commands
    app[QUERIES] = queries
    app[CONFIG] = config
    app[METRICS] = HttpMetrics()
    app.add_routes(workflows.routes)
    app.add_routes(executions.routes)
    app.add_routes(feed.routes)
    app.add_routes(stats.routes)
    app.cleanup_ctx.append(feed.notifier_ctx)
    app.add_routes(health.routes)
    app.add_routes(openapi.routes)
    return app
