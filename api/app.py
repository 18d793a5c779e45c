"""The aiohttp application: `create_app(service, store, pool, redis, settings)`.

The caller (steplog/) owns every dependency: it opens and closes the pool and
the Redis client; the app only reads them through typed AppKeys. Request
bodies are capped at settings.max_payload_bytes plus a small envelope
allowance (aiohttp answers 413 beyond that); routes check the definition and
the execution input against max_payload_bytes itself.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from api import executions, feed, health, stats, workflows
from api.keys import METRICS, POOL, REDIS, SERVICE, SETTINGS, STORE
from api.metrics import HttpMetrics
from api.middleware import observe_middleware, request_id_middleware
from api.problems import error_middleware
from engine.adapters.store import EventStore
from engine.service import EngineService
from steplog.settings import Settings

# Room for the JSON around an input of exactly max_payload_bytes ({"input": ..., "name": ...}).
ENVELOPE_BYTES = 1024


def create_app(
    service: EngineService,
    store: EventStore,
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
) -> web.Application:
    """Build the API application; nothing in it closes what it was given."""
    app = web.Application(
        client_max_size=settings.max_payload_bytes + ENVELOPE_BYTES,
        middlewares=[request_id_middleware, observe_middleware, error_middleware],
    )
    app[SERVICE] = service
    app[STORE] = store
    app[POOL] = pool
    app[REDIS] = redis
    app[SETTINGS] = settings
    app[METRICS] = HttpMetrics()
    app.add_routes(workflows.routes)
    app.add_routes(executions.routes)
    app.add_routes(feed.routes)
    app.add_routes(stats.routes)
    app.cleanup_ctx.append(feed.notifier_ctx)
    app.add_routes(health.routes)
    return app
