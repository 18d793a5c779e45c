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
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from engine.bus import Bus
from engine.relay import Relay
from engine.runtime import Engine
from engine.service import EngineService
from engine.store import EventStore
from engine.timers import TimerService
from engine.worker import HandlerRegistry, Worker, default_registry
from steplog.embedded import embedded_servers
from steplog.migrate import migrate
from steplog.settings import Settings

log = logging.getLogger("steplog")


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    store: EventStore
    bus: Bus
    service: EngineService


@contextlib.asynccontextmanager
async def server_urls(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """The PostgreSQL and Redis URLs to use: the configured ones, or embedded servers
    started (and stopped afterwards) under ``settings.data_dir``."""
    if settings.database_url and settings.redis_url:
        yield settings.database_url, settings.redis_url
        return
    async with embedded_servers(settings.data_dir) as (db_url, redis_url):
        yield settings.database_url or db_url, settings.redis_url or redis_url


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, database_url: str, redis_url: str, *, pool_size: int = 20
) -> AsyncIterator[Resources]:
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=pool_size)
    try:
        await migrate(pool)
        redis = aioredis.from_url(redis_url)
        try:
            store = EventStore(pool)
            bus = Bus(redis, settings.redis_prefix, settings.partitions)
            service = EngineService(store, max_payload_bytes=settings.max_payload_bytes)
            yield Resources(settings, pool, redis, store, bus, service)
        finally:
            await redis.aclose()
    finally:
        await pool.close()


async def run_roles(
    r: Resources,
    stop: asyncio.Event,
    *,
    registry: HandlerRegistry | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the roles of ``r.settings`` until ``stop`` is set."""
    from projections.runner import Projector

    settings = r.settings
    roles = set(settings.roles)
    coros = []
    if "engine" in roles:
        engine = Engine(r.service, r.bus, visibility_timeout_s=settings.task_visibility_timeout_s)
        coros.append(engine.run(stop))
        coros.append(TimerService(r.store, r.bus).run(stop))
        coros.append(Relay(r.store, r.bus, r.pool).run(stop))
    if "worker" in roles:
        if registry is None:
            registry = default_registry()
            registry.load_entry_points()
        coros.append(Worker(r.bus, registry).run(stop))
    if "projector" in roles:
        coros.append(Projector(r.pool, r.store, r.bus).run(stop))
    runner: web.AppRunner | None = None
    if "api" in roles:
        from api.app import create_app

        app = create_app(r.service, r.store, r.pool, r.redis, settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("API listening on http://%s:%s", settings.host, settings.port)
    if ready is not None:
        ready.set()
    try:
        tasks = [asyncio.create_task(c) for c in coros]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if runner is not None:
            await runner.cleanup()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    async with server_urls(settings) as (db_url, redis_url):
        async with open_resources(settings, db_url, redis_url) as r:
            await run_roles(r, stop)
