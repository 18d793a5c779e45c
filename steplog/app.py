"""The composition root: build every dependency once and run the requested roles.

Roles: ``api`` (HTTP), ``engine`` (trigger consumer, timer service and the
PostgreSQL -> Redis relay), ``worker`` (task handlers), ``projector`` (read
models), ``webhooks`` (webhook deliveries, engine/loops/webhooks.py). Any subset runs in one process; processes share PostgreSQL and Redis.
Stopping is an event: each role finishes what it is doing (workers get a
grace period for running handlers) and the resources close in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from engine.access import Access
from engine.adapters.activities import ActivityStore
from engine.adapters.bus import Bus, RedisClient, TokenBuckets
from engine.adapters.bus import connect as connect_redis
from engine.adapters.clock import DbClock
from engine.adapters.limits_store import LimitsStore
from engine.adapters.notifier import EventNotifier
from engine.adapters.outbound import Outbound
from engine.adapters.postgres import open_pool, translate_errors
from engine.adapters.store import EventStore
from engine.adapters.webhooks_store import WebhookStore
from engine.errors import Unavailable
from engine.limits import Limits
from engine.loops.clock import ClockWatch
from engine.loops.engine_loop import Engine
from engine.loops.http_task import HTTP_INVOKE, register_http_task
from engine.loops.metrics import ROLE_RESTARTS, ROLE_UP, StreamSampler, count_start_decision
from engine.loops.recovery import Recovery
from engine.loops.relay import Relay
from engine.loops.timers import TimerService
from engine.loops.webhooks import WebhookSender
from engine.loops.worker import HandlerRegistry, Worker, default_registry
from engine.messages import ENGINE_GROUP, WORKER_GROUP
from engine.service import EngineService
from engine.stopping import sleep_or_stop
from engine.tasks import Tasks
from engine.webhooks import Webhooks
from projections.queries import Queries
from steplog.datadir import local_servers
from steplog.heap import freeze_heap
from steplog.migrate import migrate
from steplog.monitor import start_monitor
from steplog.settings import Settings
from steplog.tracing import LeanTracer, instrument_drivers, tracer_provider

if TYPE_CHECKING:
    from api.server import ServerLimits

log = logging.getLogger("steplog")


@dataclass
class ApiSide:
    """The facades the API role works through. In a process that also runs loops they
    live on a pool of their own, whose statements time out after
    ``Settings.api_statement_timeout_ms`` (the loops' after the longer
    ``statement_timeout_ms``); otherwise they are the process's own."""

    pool: asyncpg.Pool
    service: EngineService
    queries: Queries
    access: Access
    limits: Limits
    # Task callbacks and activities (the API's /v1/tasks and /v1/activities routes).
    tasks: Tasks
    # Webhook subscriptions (the API's /v1/webhooks routes).
    webhooks: Webhooks


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: RedisClient
    store: EventStore
    bus: Bus
    service: EngineService
    queries: Queries
    access: Access
    limits: Limits
    # PostgreSQL's clock: the one every durable time is read from (DESIGN invariant 8).
    clock: DbClock
    # Spans of every role (steplog/tracing.py); None: tracing off.
    tracer: Tracer | None = None
    # What the API role uses (None: the facades above, on the same pool).
    api_side: ApiSide | None = None
    # Webhook subscriptions on the process's pool (the CLI; the API role's: `api`).
    webhooks: Webhooks | None = None

    @property
    def api(self) -> ApiSide:
        """The facades of the API role (see `ApiSide`)."""
        if self.api_side is None:
            self.api_side = ApiSide(
                self.pool,
                self.service,
                self.queries,
                self.access,
                self.limits,
                _tasks(self.settings, self.service, self.pool, self.bus),
                self.webhooks or _webhooks(self.settings, self.pool),
            )
        return self.api_side

    @property
    def tasks(self) -> Tasks:
        """Task callbacks and activity polls, as the API role serves them."""
        return self.api.tasks


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
    serving_api: bool | None = None,
) -> AsyncIterator[Resources]:
    """Open the pool (`Unavailable` when PostgreSQL does not answer), apply the
    migrations, and build the store, bus, command and query sides over them.
    ``tracer_provider``: the one to span with (the caller's to shut down), else the one
    the settings configure (None: tracing off), with the drivers instrumented when
    ``settings.trace_drivers``. ``serving_api`` (default: the api role is among
    ``settings.roles``): build the API's facades (`ApiSide`); with other roles beside
    it, on a second pool with the API's shorter statement timeout and half of the
    ``pool_size`` connections."""
    if serving_api is None:
        serving_api = "api" in settings.roles
    async with _tracing(settings, tracer_provider) as tracer:
        async with _open_resources(
            settings, database_url, redis_url, pool_size, tracer, serving_api
        ) as r:
            yield r


@contextlib.asynccontextmanager
async def _tracing(
    settings: Settings, given: TracerProvider | None
) -> AsyncIterator[Tracer | None]:
    if given is not None:
        yield LeanTracer(given)
        return
    provider = tracer_provider(settings)
    if provider is None:
        yield None
        return
    undo = instrument_drivers(provider) if settings.trace_drivers else None
    try:
        yield LeanTracer(provider)
    finally:
        if undo is not None:
            undo()
        provider.shutdown()  # exports what is still batched


@contextlib.asynccontextmanager
async def _open_resources(
    settings: Settings,
    database_url: str,
    redis_url: str,
    pool_size: int,
    tracer: Tracer | None,
    serving_api: bool,
) -> AsyncIterator[Resources]:
    api_only = serving_api and set(settings.roles) == {"api"}
    timeout_ms = settings.api_statement_timeout_ms if api_only else settings.statement_timeout_ms
    # The API beside loops gets half of the process's connections on a pool of its own:
    # the process never holds more than ``pool_size`` connections either way.
    api_share = 0 if not serving_api or api_only else max(2, pool_size // 2)
    pool = await open_pool(
        database_url,
        min_size=2,
        max_size=max(2, pool_size - api_share),
        statement_timeout_ms=timeout_ms,
    )
    try:
        with translate_errors():
            await migrate(pool)
        clock = DbClock(pool)
        await clock.sample()  # before anything reads it
        redis = connect_redis(
            redis_url,
            cluster=settings.redis_cluster,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        try:
            store = EventStore(pool)
            bus = Bus(redis, settings.redis_prefix, settings.partitions)
            service, queries, access, limits = _facades(
                settings, store, pool, redis, bus, tracer, clock
            )
            r = Resources(
                settings, pool, redis, store, bus, service, queries, access, limits, clock, tracer
            )
            r.webhooks = _webhooks(settings, pool)
            if not serving_api or api_only:
                yield r
                return
            api_pool = await open_pool(
                database_url,
                min_size=1,
                max_size=api_share,
                statement_timeout_ms=settings.api_statement_timeout_ms,
            )
            try:
                api_store = EventStore(api_pool)
                facades = _facades(settings, api_store, api_pool, redis, bus, tracer, clock)
                r.api_side = ApiSide(
                    api_pool,
                    *facades,
                    _tasks(settings, facades[0], api_pool, bus),
                    _webhooks(settings, api_pool),
                )
                yield r
            finally:
                await api_pool.close()
        finally:
            await redis.aclose()
    finally:
        await pool.close()


def _facades(
    settings: Settings,
    store: EventStore,
    pool: asyncpg.Pool,
    redis: RedisClient,
    bus: Bus,
    tracer: Tracer | None,
    clock: DbClock,
) -> tuple[EngineService, Queries, Access, Limits]:
    """The command, query, access and limits facades over ``store`` and ``pool``; durable
    time from ``clock`` (PostgreSQL's)."""
    limits = Limits(
        LimitsStore(pool),
        TokenBuckets(redis, settings.redis_prefix),
        settings.limit_defaults(),
    )
    service = EngineService(
        store,
        max_payload_bytes=settings.max_payload_bytes,
        arns=settings.arn_scope(),
        limits=limits,
        tracer=tracer,
        clock=clock.now,
        # The first decision of a start is made by the API (EngineService.start): counted
        # with the engine's.
        on_decision=count_start_decision,
        decide_at_start=True,
    )
    queries = Queries(store, pool, bus.ready_probe, clock.now)
    return service, queries, Access.over(pool, cache_s=settings.key_cache_s), limits


def _tasks(settings: Settings, service: EngineService, pool: asyncpg.Pool, bus: Bus) -> Tasks:
    """Task callbacks and activity polls over ``service`` and ``pool``."""
    return Tasks(
        service,
        ActivityStore(pool),
        bus,
        visibility_timeout_s=settings.task_visibility_timeout_s,
        max_deliveries=settings.max_deliveries,
    )


@dataclass
class RoleStatus:
    """One role loop as its supervisor and the sampler last saw it."""

    name: str
    state: str = "starting"  # running, restarting (after an error), stopped
    restarts: int = 0
    last_error: str | None = None
    failures: deque[float] = field(default_factory=deque)  # monotonic times, recent
    progress: Callable[[], int] | None = None  # work done (a counter)
    backlog: Callable[[], int] | None = None  # work waiting for it (sampled)
    seen_progress: int = -1
    progress_at: float = field(default_factory=time.monotonic)


class RoleHealth:
    """The role loops of this process, for readiness (/health/ready), the metrics and
    the monitor's ``roles`` command. A role is unhealthy while it restarts after an
    error, when it failed ``FLAP_COUNT`` times within ``FLAP_WINDOW_S`` (restarting in a
    loop), once stopped while the process runs, or when work waits for it
    (``backlog``) and its ``progress`` has not moved for ``stall_after_s``."""

    FLAP_COUNT = 3
    FLAP_WINDOW_S = 300.0

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.roles: dict[str, RoleStatus] = {}

    def add(
        self,
        name: str,
        *,
        progress: Callable[[], int] | None = None,
        backlog: Callable[[], int] | None = None,
    ) -> RoleStatus:
        status = self.roles[name] = RoleStatus(name, progress=progress, backlog=backlog)
        ROLE_UP.labels(name).set(0)
        ROLE_RESTARTS.labels(name)  # shown from the start, at 0
        return status

    def running(self, name: str) -> None:
        self.roles[name].state = "running"
        ROLE_UP.labels(name).set(1)

    def failed(self, name: str, exc: BaseException) -> None:
        role = self.roles[name]
        role.state, role.restarts = "restarting", role.restarts + 1
        role.last_error = f"{type(exc).__name__}: {exc}"[:300]
        role.failures.append(time.monotonic())
        ROLE_UP.labels(name).set(0)
        ROLE_RESTARTS.labels(name).inc()

    def stopped(self, name: str) -> None:
        self.roles[name].state = "stopped"
        ROLE_UP.labels(name).set(0)

    def observe(self) -> None:
        """Note each role's progress (called by every sample and every check)."""
        now = time.monotonic()
        for role in self.roles.values():
            while role.failures and now - role.failures[0] > self.FLAP_WINDOW_S:
                role.failures.popleft()
            if role.progress is None:
                continue
            done = role.progress()
            waiting = role.backlog() if role.backlog is not None else 0
            if done != role.seen_progress or waiting == 0:
                role.seen_progress, role.progress_at = done, now

    def problems(self) -> dict[str, str]:
        """What is wrong, by role (empty when every role is healthy)."""
        self.observe()
        now = time.monotonic()
        found: dict[str, str] = {}
        for name, role in self.roles.items():
            if len(role.failures) >= self.FLAP_COUNT:
                found[name] = (
                    f"restarting in a loop: {len(role.failures)} failures in "
                    f"{self.FLAP_WINDOW_S:.0f}s; last: {role.last_error}"
                )
            elif role.state in ("restarting", "stopped"):
                found[name] = f"{role.state}" + (
                    f" after: {role.last_error}" if role.state == "restarting" else ""
                )
            elif role.backlog is not None and now - role.progress_at > self.stall_after_s:
                found[name] = (
                    f"no progress for {now - role.progress_at:.0f}s with "
                    f"{role.backlog()} entries waiting"
                )
        return found


async def _supervised(
    name: str,
    run: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    health: RoleHealth | None = None,
) -> None:
    """Run one role's loop until ``stop`` is set. A loop that dies of an error it did
    not handle is logged and started again after a back-off: one role's bug, or an
    error of PostgreSQL or Redis nobody foresaw, never takes the process down.
    ``health`` follows it (RoleHealth)."""
    health = health or RoleHealth(0)
    if name not in health.roles:
        health.add(name)
    delay = 1.0
    while not stop.is_set():
        try:
            health.running(name)
            await run(stop)
            return
        except asyncio.CancelledError:
            raise
        except Unavailable as exc:
            # An outage the loop did not handle itself: expected, so one line, no traceback.
            health.failed(name, exc)
            log.warning("role %s: %s; restarting it in %.0fs", name, exc, delay)
            await sleep_or_stop(stop, delay)
            delay = min(delay * 2, 30.0)
        except Exception as exc:
            health.failed(name, exc)
            log.exception("role %s failed; restarting it in %.0fs", name, delay)
            await sleep_or_stop(stop, delay)
            delay = min(delay * 2, 30.0)
        finally:
            if stop.is_set() or health.roles[name].state == "running":
                health.stopped(name)


async def run_roles(
    r: Resources,
    stop: asyncio.Event,
    *,
    registry: HandlerRegistry | None = None,
    ready: asyncio.Event | None = None,
    health: RoleHealth | None = None,
) -> None:
    """Run the roles of ``r.settings`` until ``stop`` is set; ``health`` (made here when
    not given) follows their loops."""
    from projections.runner import projectors

    settings = r.settings
    roles = set(settings.roles)
    # Past the visibility timeout a stuck consumer's entries are claimed by others:
    # twice that (at least a minute) without progress while work waits is a stall.
    health = health or RoleHealth(max(60.0, 2 * settings.task_visibility_timeout_s))
    sampler = StreamSampler(r.bus, r.store, on_sample=health.observe)
    coros = []
    engine: Engine | None = None
    worker: Worker | None = None

    def supervise(name: str, run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        coros.append(_supervised(name, run, stop, health))

    # Every process reads durable time from PostgreSQL's clock: keep its reading fresh.
    watch = ClockWatch(
        r.clock,
        interval_s=settings.clock_sample_interval_s,
        warn_offset_s=settings.clock_offset_warn_s,
    )
    watch.report(r.clock.offset_s)  # the first sample's (open_resources)
    supervise("clock", watch.run)
    if roles & {"engine", "worker"}:
        supervise("sampler", sampler.run)
    if "engine" in roles:
        engine = Engine(
            r.service,
            r.bus,
            visibility_timeout_s=settings.task_visibility_timeout_s,
            max_deliveries=settings.max_deliveries,
            cache_bytes=int(settings.state_cache_mb * 1024 * 1024),
            clock=r.clock.now,
            tracer=r.tracer,
        )
        health.add(
            "engine", progress=lambda: engine.handled, backlog=lambda: sampler.backlog(ENGINE_GROUP)
        )
        supervise("engine", engine.run)
        # Timers are due by PostgreSQL's clock, read by the claim itself.
        supervise("timers", TimerService(r.store, r.bus, tracer=r.tracer).run)
        supervise("relay", Relay(r.store, r.bus, r.pool, tracer=r.tracer, clock=r.clock.now).run)
        supervise("recovery", Recovery(r.service, r.bus, r.pool, clock=r.clock.now).run)
    outbound: Outbound | None = None
    if "worker" in roles:
        if registry is None:
            registry = default_registry()
            registry.load_entry_points()
            registry.load_modules(settings.handlers)
        if HTTP_INVOKE not in registry:
            outbound = Outbound(settings.outbound_policy())  # started with the roles below
            register_http_task(registry, outbound, settings.http_task_connections())
        worker = Worker(
            r.bus,
            registry,
            shutdown_grace_s=settings.shutdown_grace_s,
            visibility_timeout_s=settings.task_visibility_timeout_s,
            max_deliveries=settings.max_deliveries,
            ended=r.store.ended_executions,
            tracer=r.tracer,
            clock=r.clock.now,
        )
        health.add(
            "worker",
            # Started or finished tasks: a worker busy with long tasks is not stalled.
            progress=lambda: worker.started + worker.completed,
            backlog=lambda: sampler.undelivered(WORKER_GROUP),
        )
        supervise("worker", worker.run)
    if "projector" in roles:
        for p in projectors(r.pool, r.store, r.bus):
            supervise(f"projector:{p.projection.name}", p.run)
    if "webhooks" in roles:
        supervise("webhooks", _webhook_sender(r).run)
    runners: list[web.AppRunner] = []
    if "api" in roles and settings.auth and settings.key_cache_s > 0:
        supervise("api:keys", r.api.access.follow_revocations)
    if "api" in roles:
        from api.app import create_app
        from api.config import ApiConfig
        from api.health import ROLE_HEALTH
        from api.server import HardenedAppRunner

        config = ApiConfig(
            namespace=settings.namespace,
            max_payload_bytes=settings.max_payload_bytes,
            max_definition_bytes=settings.max_definition_bytes,
            body_timeout_s=settings.http_body_timeout_s,
            cors_allow_origins=settings.cors_allow_origins,
            auth=settings.auth,
            metrics_token=settings.metrics_token,
            request_timeout_s=settings.request_timeout_s,
        )
        api = r.api
        app = create_app(
            api.service,
            api.queries,
            config,
            api.access,
            limits=api.limits,
            tracer=r.tracer,
            task_callbacks=api.tasks,
            webhooks=api.webhooks,
        )
        app[ROLE_HEALTH] = health
        runner = HardenedAppRunner(app, server_limits(settings))
        runners.append(runner)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("API listening on http://%s:%s", settings.host, settings.port)
    elif settings.metrics_port:
        runners.append(
            await _metrics_listener(settings.host, settings.metrics_port, settings.metrics_token)
        )
    monitor = (
        start_monitor(settings, r, health, sampler, engine=engine, worker=worker)
        if settings.monitor_port
        else None
    )
    if ready is not None:
        ready.set()
    try:
        if outbound is not None:
            await outbound.start()
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
        if outbound is not None:
            await outbound.close()
        for each in runners:
            await each.cleanup()
        if monitor is not None:
            await asyncio.to_thread(monitor.close)


def _webhooks(settings: Settings, pool: asyncpg.Pool) -> Webhooks:
    """Webhook subscriptions on ``pool``, held to the settings' outbound guard, rotation
    overlap and cap."""
    return Webhooks.over(pool, settings.outbound_policy(), settings.subscription_policy())


def _webhook_sender(r: Resources) -> WebhookSender:
    return WebhookSender(
        WebhookStore(r.pool),
        Outbound(r.settings.outbound_policy()),
        notifier=EventNotifier(r.pool),
        policy=r.settings.delivery_policy(),
    )


async def _metrics_listener(host: str, port: int, token: str | None) -> web.AppRunner:
    """GET /metrics (the process-wide registry) on host:port, for a process without the
    API role. The API's rule holds here too: with a metrics token, `Authorization: Bearer
    <token>` (401 otherwise); without one, loopback clients only (403 for others)."""
    import hmac
    import ipaddress

    import prometheus_client

    async def metrics(request: web.Request) -> web.Response:
        if token is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        else:
            try:
                local = ipaddress.ip_address(request.remote or "").is_loopback
            except ValueError:
                local = False
            if not local:
                return web.Response(status=403)
        return web.Response(
            body=prometheus_client.generate_latest(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics on http://%s:%s/metrics", host, port)
    return runner


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
                if own and settings.auth and "api" in settings.roles:
                    from steplog.devkey import ensure_admin_key

                    await ensure_admin_key(r.access, settings.data_dir, sys.stdout)
                ready = asyncio.Event()
                settle = asyncio.create_task(_freeze_when(ready))
                try:
                    await run_roles(r, stop, ready=ready)
                finally:
                    settle.cancel()
            finally:
                await resources.__aexit__(None, None, None)
            return


async def _freeze_when(ready: asyncio.Event) -> None:
    await ready.wait()
    freeze_heap()
