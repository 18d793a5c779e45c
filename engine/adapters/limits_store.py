"""PostgreSQL side of the limits (migration 0007): per-namespace overrides of the rate
limits and of the RUNNING quota, and the count of RUNNING executions the database keeps.

All SQL of the limits is the named statements below; asyncpg errors are translated
(engine.adapters.postgres): `Unavailable` when PostgreSQL does not answer.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from engine.adapters.postgres import translate_errors

SELECT_RATE_LIMITS = """
SELECT budget, scope, rate_per_s, burst FROM namespace_rate_limits WHERE namespace = $1"""
UPSERT_RATE_LIMIT = """
INSERT INTO namespace_rate_limits (namespace, budget, scope, rate_per_s, burst)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (namespace, budget, scope)
DO UPDATE SET rate_per_s = EXCLUDED.rate_per_s, burst = EXCLUDED.burst, updated_at = now()"""
DELETE_RATE_LIMITS = "DELETE FROM namespace_rate_limits WHERE namespace = $1"
SELECT_QUOTA = "SELECT running_max FROM namespace_quotas WHERE namespace = $1"
UPSERT_QUOTA = """
INSERT INTO namespace_quotas (namespace, running_max) VALUES ($1, $2)
ON CONFLICT (namespace) DO UPDATE SET running_max = EXCLUDED.running_max, updated_at = now()"""
DELETE_QUOTA = "DELETE FROM namespace_quotas WHERE namespace = $1"
# At most 16 rows, read by primary key (the trigger of migration 0007 keeps them).
COUNT_RUNNING = """
SELECT coalesce(sum(running), 0)::bigint FROM running_executions WHERE namespace = $1"""


class RateOverride(msgspec.Struct, frozen=True):
    """One stored override: ``budget`` (starts, writes, reads), ``scope`` (namespace or
    key), the bucket's refill rate and size."""

    budget: str
    scope: str
    rate_per_s: float
    burst: int


class NamespaceOverrides(msgspec.Struct, frozen=True):
    """Everything stored for one namespace; ``running_max`` None when not overridden."""

    rates: tuple[RateOverride, ...] = ()
    running_max: int | None = None


class LimitsStore:
    """The limits tables over a pool it does not own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def overrides(self, namespace: str) -> NamespaceOverrides:
        with translate_errors():
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(SELECT_RATE_LIMITS, namespace)
                running_max = await conn.fetchval(SELECT_QUOTA, namespace)
        return NamespaceOverrides(
            rates=tuple(
                RateOverride(r["budget"], r["scope"], float(r["rate_per_s"]), int(r["burst"]))
                for r in rows
            ),
            running_max=running_max,
        )

    async def set_rate(
        self, namespace: str, budget: str, scope: str, rate_per_s: float, burst: int
    ) -> None:
        await self._execute(UPSERT_RATE_LIMIT, namespace, budget, scope, rate_per_s, burst)

    async def set_running_max(self, namespace: str, running_max: int) -> None:
        await self._execute(UPSERT_QUOTA, namespace, running_max)

    async def reset(self, namespace: str) -> None:
        """Drop every override of ``namespace`` (it falls back to the defaults)."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(DELETE_RATE_LIMITS, namespace)
                await conn.execute(DELETE_QUOTA, namespace)

    async def running(self, namespace: str) -> int:
        """Executions of ``namespace`` whose last event is not terminal, as committed."""
        with translate_errors():
            return int(await self._pool.fetchval(COUNT_RUNNING, namespace))

    async def _execute(self, query: str, *args: Any) -> None:
        with translate_errors():
            await self._pool.execute(query, *args)
