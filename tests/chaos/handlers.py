"""Task handlers of the chaos test and the scale bench, loaded by `steplog serve` through
``STEPLOG_HANDLERS=tests.chaos.handlers``.

``chaos:charge`` has a side effect made exactly once with the task's idempotency key: in
one transaction it records the key in ``chaos_effects`` (primary key) and, only when the
key is new, adds the amount to the execution's ``chaos_ledger`` row. Every call, repeated
deliveries included, is counted in ``chaos_calls`` (so the test can tell that tasks did
run more than once while their effects did not). ``chaos:flaky`` fails with Chaos.Flaky
until its attempt reaches the input's ``fail_times``; ``chaos:die`` kills its process. The tables live in steplog's own
database (`create_tables`). PostgreSQL may restart under a handler: it retries its
transaction until it commits, as a handler with a durable effect would.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from uuid import UUID

import asyncpg

from engine.loops.worker import HandlerRegistry, TaskContext, TaskFailure
from steplog.settings import Settings

TABLES = """
CREATE TABLE IF NOT EXISTS chaos_effects (
    idempotency_key text PRIMARY KEY,
    execution_id    uuid NOT NULL,
    amount          int  NOT NULL
);
CREATE TABLE IF NOT EXISTS chaos_ledger (
    execution_id uuid PRIMARY KEY,
    total        int  NOT NULL
);
CREATE TABLE IF NOT EXISTS chaos_calls (
    idempotency_key text NOT NULL,
    called_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""
RECORD_CALL = "INSERT INTO chaos_calls (idempotency_key) VALUES ($1)"
RECORD_EFFECT = """
INSERT INTO chaos_effects (idempotency_key, execution_id, amount) VALUES ($1, $2, $3)
ON CONFLICT (idempotency_key) DO NOTHING"""
ADD_TO_LEDGER = """
INSERT INTO chaos_ledger (execution_id, total) VALUES ($1, $2)
ON CONFLICT (execution_id) DO UPDATE SET total = chaos_ledger.total + EXCLUDED.total"""


async def create_tables(conn: asyncpg.Connection) -> None:
    await conn.execute(TABLES)


class _Effects:
    """One small pool per process, opened on first use."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                # The plugin is configured like the process it runs in.
                url = Settings.from_env(os.environ).database_url
                self._pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
            return self._pool

    async def charge(self, ctx: TaskContext, amount: int) -> None:
        delay = 0.1
        while True:
            try:
                pool = await self.pool()
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(RECORD_CALL, ctx.idempotency_key)
                    status = await conn.execute(
                        RECORD_EFFECT, ctx.idempotency_key, UUID(ctx.execution_id), amount
                    )
                    if status == "INSERT 0 1":
                        await conn.execute(ADD_TO_LEDGER, UUID(ctx.execution_id), amount)
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)  # PostgreSQL restarting: try again
                delay = min(delay * 2, 2.0)


_effects = _Effects()


async def charge(value: Any, ctx: TaskContext) -> Any:
    amount = int(value["amount"])
    await _effects.charge(ctx, amount)
    return {"charged": amount}


def flaky(value: Any, ctx: TaskContext) -> Any:
    if ctx.attempt < int(value["fail_times"]):
        raise TaskFailure("Chaos.Flaky", f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


def die(value: Any, ctx: TaskContext) -> Any:
    """A poison task: the process running it dies at once (as from a segfault or OOM)."""
    os._exit(17)


def register(registry: HandlerRegistry) -> None:
    registry.register("chaos:charge", charge)
    registry.register("chaos:flaky", flaky)
    registry.register("chaos:die", die)
