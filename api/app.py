"""The aiohttp application: `create_app(commands, queries, config)`.

The API talks to two facades only: the command side (`EngineService`) and the
query side (`Queries`), both built and owned by the caller (steplog/), which
also closes what they use; the app reaches them through typed AppKeys. Request
bodies are capped at config.max_payload_bytes plus a small envelope allowance
(aiohttp answers 413 beyond that); routes check the definition and the
execution input against max_payload_bytes itself.

Middlewares, outermost first: request id -> trace (with a tracer) -> observe (metrics,
access log) -> CORS preflight -> errors (problem+json) -> deadline (api/deadline.py:
503 when a request does not answer in time) -> auth (api/auth.py: API key,
namespace, role) -> rate limit (api/ratelimit.py, when given limits) -> body (415,
body read deadline) ->
handler; every response gets the headers of api/hygiene.py. The contract of
every route is published at GET /v1/openapi.json and /docs (api/openapi.py).
Serve it with api.server.HardenedAppRunner for the connection limits.
"""

from __future__ import annotations

from aiohttp import web
from opentelemetry.trace import Tracer

from api import access as access_routes
from api import executions, feed, health, openapi, stats, workflows
from api.auth import auth_middleware
from api.config import ApiConfig
from api.deadline import deadline_middleware, lift_when_streaming
from api.hygiene import body_middleware, cors_middleware, on_response_prepare
from api.keys import ACCESS, COMMANDS, CONFIG, METRICS, QUERIES
from api.metrics import HttpMetrics
from api.middleware import observe_middleware, request_id_middleware, trace_middleware
from api.problems import error_middleware
from api.ratelimit import LIMITS, add_rate_limit_headers, ratelimit_middleware
from engine.access import Access
from engine.limits import Limits
from engine.service import EngineService
from projections.queries import Queries

# Room for the JSON around an input of exactly max_payload_bytes ({"input": ..., "name": ...}).
ENVELOPE_BYTES = 1024


def create_app(
    commands: EngineService,
    queries: Queries,
    config: ApiConfig,
    access: Access,
    *,
    limits: Limits | None = None,
    tracer: Tracer | None = None,
) -> web.Application:
    """Build the API application; nothing in it closes what it was given. ``access``:
    keys, namespaces and the audit trail (the authentication step reads it).
    ``limits``: the rate limits (api/ratelimit.py); None serves without them.
    ``tracer`` (None: tracing off) spans each request (api.middleware.trace_middleware)."""
    rate_limit = [ratelimit_middleware] if limits is not None else []
    tracing = [trace_middleware(tracer)] if tracer is not None else []
    app = web.Application(
        client_max_size=max(config.max_payload_bytes, config.max_definition_bytes) + ENVELOPE_BYTES,
        middlewares=[
            request_id_middleware,
            *tracing,
            observe_middleware,
            cors_middleware,
            error_middleware,
            deadline_middleware,
            auth_middleware,
            *rate_limit,
            body_middleware,
        ],
    )
    app.on_response_prepare.append(on_response_prepare)
    app.on_response_prepare.append(lift_when_streaming)
    if limits is not None:
        app[LIMITS] = limits
        app.on_response_prepare.append(add_rate_limit_headers)
    app[COMMANDS] = commands
    app[QUERIES] = queries
    app[CONFIG] = config
    app[ACCESS] = access
    app[METRICS] = HttpMetrics()
    app[health.PROBES] = health.DependencyProbes()
    app.add_routes(workflows.routes)
    app.add_routes(executions.routes)
    app.add_routes(feed.routes)
    app.add_routes(stats.routes)
    app.add_routes(access_routes.routes)
    app.cleanup_ctx.append(feed.notifier_ctx)
    app.add_routes(health.routes)
    app.add_routes(openapi.routes)
    return app
