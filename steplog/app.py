"""The composition root: build every dependency once and run the requested roles.

Roles: ``api`` (HTTP), ``engine`` (trigger consumer, timer service and the
PostgreSQL -> Redis relay), ``worker`` (task handlers), ``projector`` (read
models). Any subset runs in one process; processes share PostgreSQL and Redis.
Stopping is an event: each role finishes what it is doing (workers get a
grace period for running handlers) and the resources close in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from engine.adapters.bus import Bus
from engine.adapters.postgres import open_pool, translate_errors
from engine.adapters.store import EventStore
from engine.errors import Unavailable
from engine.loops.engine_loop import Engine
from engine.loops.recovery import Recovery
from engine.loops.relay import Relay
from engine.loops.timers import TimerService
from engine.loops.worker import HandlerRegistry, Worker, default_registry
from engine.service import EngineService
from engine.stopping import sleep_or_stop
from projections.queries import Queries
from steplog.datadir import local_servers
from steplog.migrate import migrate
from steplog.settings import Settings
from steplog.tracing import INSTRUMENTATION_SCOPE, instrument_drivers, tracer_provider

if TYPE_CHECKING:
    from api.server import ServerLimits

log = logging.getLogger("steplog")


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    store: EventStore
    bus: Bus
    service: EngineService
    queries: Queries
    # Spans of every role (steplog/tracing.py); None: tracing off.
    tracer: Tracer | None = None


@contextlib.asynccontextmanager
async def server_urls(settings: Settings, *, own: bool = False) -> AsyncIterator[tuple[str, str]]:
    """The PostgreSQL and Redis URLs to use: the configured ones, else the embedded
    servers of ``settings.data_dir``: those of the steplog already running on it, or
    started here (and stopped afterwards). ``own``: refuse a folder another steplog
    runs on (steplog.datadir.DataDirError)."""
    if settings.database_url and settings.redis_url:
        yield settings.database_url, settings.redis_url
        return
    async with local_servers(settings.data_dir, own=own) as (db_url, redis_url):
        yield settings.database_url or db_url, settings.redis_url or redis_url


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings,
    database_url: str,
    redis_url: str,
    *,
    pool_size: int = 20,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[Resources]:
    """Open the pool (`Unavailable` when PostgreSQL does not answer), apply the
    migrations, and build the store, bus, command and query sides over them.
    ``tracer_provider``: the one to span with (the caller's to shut down), else the one
    the settings configure (None: tracing off), with the drivers instrumented when
    ``settings.trace_drivers``."""
    async with _tracing(settings, tracer_provider) as tracer:
        async with _open_resources(settings, database_url, redis_url, pool_size, tracer) as r:
            yield r


@contextlib.asynccontextmanager
async def _tracing(
    settings: Settings, given: TracerProvider | None
) -> AsyncIterator[Tracer | None]:
    if given is not None:
        yield given.get_tracer(INSTRUMENTATION_SCOPE)
        return
    provider = tracer_provider(settings)
    if provider is None:
        yield None
        return
    undo = instrument_drivers(provider) if settings.trace_drivers else None
    try:
        yield provider.get_tracer(INSTRUMENTATION_SCOPE)
    finally:
        if undo is not None:
            undo()
        provider.shutdown()  # exports what is still batched


@contextlib.asynccontextmanager
async def _open_resources(
    settings: Settings, database_url: str, redis_url: str, pool_size: int, tracer: Tracer | None
) -> AsyncIterator[Resources]:
    pool = await open_pool(database_url, min_size=2, max_size=pool_size)
    try:
        with translate_errors():
            await migrate(pool)
        redis = aioredis.from_url(redis_url)
        try:
            store = EventStore(pool)
            bus = Bus(redis, settings.redis_prefix, settings.partitions)
            service = EngineService(
                store,
                max_payload_bytes=settings.max_payload_bytes,
                arns=settings.arn_scope(),
                tracer=tracer,
            )
            queries = Queries(store, pool, bus.ping)
            yield Resources(settings, pool, redis, store, bus, service, queries, tracer)
        finally:
            await redis.aclose()
    finally:
        await pool.close()


async def _supervised(
    name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Run one role's loop until ``stop`` is set. A loop that dies of an error it did
    not handle is logged and started again after a back-off: one role's bug, or an
    error of PostgreSQL or Redis nobody foresaw, never takes the process down."""
    delay = 1.0
    while not stop.is_set():
        try:
            await run(stop)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("role %s failed; restarting it in %.0fs", name, delay)
            await sleep_or_stop(stop, delay)
            delay = min(delay * 2, 30.0)


async def run_roles(
    r: Resources,
    stop: asyncio.Event,
    *,
    registry: HandlerRegistry | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the roles of ``r.settings`` until ``stop`` is set."""
    from projections.runner import projectors

    settings = r.settings
    roles = set(settings.roles)
    coros = []
    if "engine" in roles:
        engine = Engine(
            r.service,
            r.bus,
            visibility_timeout_s=settings.task_visibility_timeout_s,
            max_deliveries=settings.max_deliveries,
            tracer=r.tracer,
        )
        timers = TimerService(r.store, r.bus, tracer=r.tracer)
        coros.append(_supervised("engine", engine.run, stop))
        coros.append(_supervised("timers", timers.run, stop))
        coros.append(_supervised("relay", Relay(r.store, r.bus, r.pool, tracer=r.tracer).run, stop))
        coros.append(_supervised("recovery", Recovery(r.service, r.bus, r.pool).run, stop))
    if "worker" in roles:
        if registry is None:
            registry = default_registry()
            registry.load_entry_points()
            registry.load_modules(settings.handlers)
        worker = Worker(
            r.bus,
            registry,
            shutdown_grace_s=settings.shutdown_grace_s,
            visibility_timeout_s=settings.task_visibility_timeout_s,
            max_deliveries=settings.max_deliveries,
            ended=r.store.ended_executions,
            tracer=r.tracer,
        )
        coros.append(_supervised("worker", worker.run, stop))
    if "projector" in roles:
        coros.extend(
            _supervised("projector", p.run, stop) for p in projectors(r.pool, r.store, r.bus)
        )
    runner: web.AppRunner | None = None
    if "api" in roles:
        from api.app import create_app
        from api.config import ApiConfig
        from api.server import HardenedAppRunner

        config = ApiConfig(
            namespace=settings.namespace,
            max_payload_bytes=settings.max_payload_bytes,
            max_definition_bytes=settings.max_definition_bytes,
            body_timeout_s=settings.http_body_timeout_s,
            cors_allow_origins=settings.cors_allow_origins,
        )
        app = create_app(r.service, r.queries, config, tracer=r.tracer)
        runner = HardenedAppRunner(app, server_limits(settings))
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("API listening on http://%s:%s", settings.host, settings.port)
    if ready is not None:
        ready.set()
    try:
        tasks = [asyncio.create_task(c) for c in coros]
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # One role ending (or a stop) ends them all, and every role is awaited: none
            # is left running, and no role's exception goes unobserved.
            stop.set()
            results = await asyncio.gather(*tasks, stopper, return_exceptions=True)
        errors = [e for e in results if isinstance(e, Exception)]
        for error in errors[1:]:
            log.error("role failed", exc_info=error)
        if errors:
            raise errors[0]
    finally:
        if runner is not None:
            await runner.cleanup()


def server_limits(settings: Settings) -> ServerLimits:
    """The HTTP server limits of ``settings``."""
    from api.server import ServerLimits

    return ServerLimits(
        max_connections=settings.http_max_connections,
        header_timeout_s=settings.http_header_timeout_s,
        keepalive_timeout_s=settings.http_keepalive_timeout_s,
        max_line_size=settings.http_max_line_bytes,
        max_field_size=settings.http_max_line_bytes,
        max_headers=settings.http_max_headers,
    )


async def serve(settings: Settings, stop: asyncio.Event, *, own: bool = False) -> None:
    """Run the roles until ``stop`` is set. PostgreSQL not answering at start (e.g. it is
    restarting) is waited for, with a back-off, rather than fatal. ``own``: as in
    `server_urls` (`steplog dev` owns its data folder)."""
    async with server_urls(settings, own=own) as (db_url, redis_url):
        delay = 0.5
        while not stop.is_set():
            try:
                resources = open_resources(settings, db_url, redis_url)
                r = await resources.__aenter__()
            except Unavailable as exc:
                log.warning("cannot reach PostgreSQL (%r); retrying in %.1fs", exc, delay)
                await sleep_or_stop(stop, delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                await run_roles(r, stop)
            finally:
                await resources.__aexit__(None, None, None)
            return
