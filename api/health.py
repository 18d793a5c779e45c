"""Health and metrics routes.

GET /health/live  -> 200 {"status": "ok"} while the process serves HTTP
GET /health/ready -> 200 {"status": "ok", "checks": {...}} when PostgreSQL
                     and Redis (Queries.ping_postgres / ping_redis) answer within 2 s and
                     accept writes (PostgreSQL not read-only: not a standby, no
                     default_transaction_read_only; Redis takes a tiny SET: not out of
                     memory, not a replica, not paused), results shared for READY_CACHE_S
                     by every caller, and,
                     when the app was given the process's roles (ROLE_HEALTH), every role
                     loop is healthy (check "roles"); else 503 problem+json (code
                     service_unavailable, Retry-After) with the checks
GET /metrics      -> Prometheus text format (with projection lag gauges)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Protocol

from aiohttp import web

from api.keys import METRICS, QUERIES
from api.problems import RETRY_AFTER_SECONDS, problem
from api.responses import json_response
from api.schemas import Health
from projections.queries import Queries

CHECK_TIMEOUT_S = 2.0
# Load balancers ask often: the dependency probes run at most this often per process.
READY_CACHE_S = 0.5
log = logging.getLogger(__name__)

routes = web.RouteTableDef()


class RoleChecks(Protocol):
    """The role loops of the serving process (steplog.app.RoleHealth)."""

    def problems(self) -> dict[str, str]:
        """What is wrong, by role: dead, restarting (in a loop), or stalled with work
        waiting; empty when every role is healthy."""
        ...


ROLE_HEALTH = web.AppKey("role_health", RoleChecks)


class DependencyProbes:
    """The PostgreSQL and Redis checks of /health/ready, run once for every caller
    that asks within READY_CACHE_S of a run (and for those that ask while one runs)."""

    def __init__(self) -> None:
        self._run: asyncio.Future[dict[str, str]] | None = None
        self._started = 0.0

    async def checks(self, queries: Queries) -> dict[str, str]:
        now = time.monotonic()
        if self._run is None or (self._run.done() and now - self._started >= READY_CACHE_S):
            self._started = now
            self._run = asyncio.ensure_future(self._probe(queries))
        # Shielded: one caller going away does not cancel the others' answer.
        return dict(await asyncio.shield(self._run))

    @staticmethod
    async def _probe(queries: Queries) -> dict[str, str]:
        postgres, redis = await asyncio.gather(
            _check(queries.ping_postgres()), _check(queries.ping_redis())
        )
        return {"postgres": postgres, "redis": redis}


PROBES = web.AppKey("dependency_probes", DependencyProbes)


async def _check(probe: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
    except Exception as exc:  # any failure means "not ready"; the detail says which
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


@routes.get("/health/live")
async def live(request: web.Request) -> web.Response:
    return json_response(Health(status="ok"))


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    checks = await request.app[PROBES].checks(request.app[QUERIES])
    role_health = request.app.get(ROLE_HEALTH)
    if role_health is not None:
        problems = role_health.problems()
        checks["roles"] = "; ".join(f"{k}: {v}" for k, v in problems.items())[:1000] or "ok"
    if all(result == "ok" for result in checks.values()):
        return json_response(Health(status="ok", checks=checks))
    down = ", ".join(name for name, result in checks.items() if result != "ok")
    return problem(
        request,
        503,
        "service_unavailable",
        f"not ready: {down} unavailable",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
        checks=checks,
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; projection lag is measured at scrape time (a failure to
    measure leaves the previous values: the rest of the page still renders)."""
    metrics = request.app[METRICS]
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            statuses = await request.app[QUERIES].projection_status()
    except Exception as exc:  # metrics must render even when PostgreSQL does not answer
        log.warning("projection lag not measured: %r", exc)
    else:
        for s in statuses:
            metrics.projection_lag.labels(s.name).set(s.lag_events)
            metrics.projection_behind.labels(s.name).set(s.behind_seconds)
    return metrics.render()
