"""Task handlers of the chaos test and the scale bench, loaded by `steplog serve` through
``STEPLOG_HANDLERS=tests.chaos.handlers``.

``chaos:charge`` has a side effect made exactly once with the task's idempotency key: in
one transaction it records the key in ``chaos_effects`` (primary key) and, only when the
key is new, adds the amount to the execution's ``chaos_ledger`` row. Every call, repeated
deliveries included, is counted in ``chaos_calls`` (so the test can tell that tasks did
run more than once while their effects did not). ``chaos:flaky`` fails with Chaos.Flaky
until its attempt reaches the input's ``fail_times``; ``chaos:die`` kills its process;
``chaos:beat`` runs for ``seconds`` reporting a heartbeat every second; ``chaos:tick``
returns its input. The tables live in steplog's own database (`create_tables`).
PostgreSQL may restart, turn read-only or drop connections under a handler: it retries
its transaction until it commits, as a handler with a durable effect would.

With ``CHAOS_RUNS_FILE`` set, every run of a handler appends one JSON line to that file
when it ends: the task's execution, task id, attempt, state and resource, the wall-clock
times it started and ended, the process and the outcome (ok, failed, cancelled, error). The fault tests read
it for runs of one attempt that overlap (two workers at once), repeated runs, and timers
that fired early (a Wait's task starting before its timestamp, a retry before its
interval). One ``write`` per line on a file opened with O_APPEND: lines of concurrent
processes never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

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
            except asyncio.CancelledError:
                raise
            except Exception:  # PostgreSQL restarting, read-only, dropping connections...
                await asyncio.sleep(delay)  # ...: try again
                delay = min(delay * 2, 2.0)


_effects = _Effects()

Handler = Callable[[Any, TaskContext], Awaitable[Any]]


def _record_run(ctx: TaskContext, resource: str, began: float, outcome: str) -> None:
    path = os.environ.get("CHAOS_RUNS_FILE")
    if not path:
        return
    line = msgspec.json.encode(
        {
            "execution_id": ctx.execution_id,
            "task_id": ctx.task_id,
            "attempt": ctx.attempt,
            "state": ctx.state,
            "resource": resource,
            "began": began,
            "ended": time.time(),
            "pid": os.getpid(),
            "outcome": outcome,
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)


def recorded(resource: str, handler: Callable[[Any, TaskContext], Any]) -> Handler:
    """``handler`` with its runs recorded in ``CHAOS_RUNS_FILE`` (see the module doc)."""

    @functools.wraps(handler)
    async def run(value: Any, ctx: TaskContext) -> Any:
        began, outcome = time.time(), "error"
        try:
            result = handler(value, ctx)
            if asyncio.iscoroutine(result):
                result = await result
            outcome = "ok"
            return result
        except TaskFailure:
            outcome = "failed"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            _record_run(ctx, resource, began, outcome)

    return run


async def charge(value: Any, ctx: TaskContext) -> Any:
    amount = int(value["amount"])
    await _effects.charge(ctx, amount)
    return {"charged": amount}


def flaky(value: Any, ctx: TaskContext) -> Any:
    if ctx.attempt < int(value["fail_times"]):
        raise TaskFailure("Chaos.Flaky", f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


async def beat(value: Any, ctx: TaskContext) -> Any:
    """Run ``seconds`` seconds with a heartbeat every second. A heartbeat that cannot be
    sent (Redis refusing) is skipped, as a real handler would: the next one may pass."""
    seconds = int(value["seconds"])
    for _ in range(seconds):
        await asyncio.sleep(1.0)
        with contextlib.suppress(Exception):
            await ctx.heartbeat()
    return {"beat": seconds}


def tick(value: Any, ctx: TaskContext) -> Any:
    return value


async def die(value: Any, ctx: TaskContext) -> Any:
    """A poison task: the process running it dies (as from a segfault or OOM), half a
    second in. Dying at once could beat the relay of the same process to recording its
    checkpoint after publishing the task; the relay would then publish the task again
    after the restart (the documented at-most-twice bound of a crash between publish and
    checkpoint), and the second entry would kill one more worker than max_deliveries
    says, which is what the test counts."""
    await asyncio.sleep(0.5)
    os._exit(17)


def register(registry: HandlerRegistry) -> None:
    registry.register("chaos:charge", recorded("chaos:charge", charge))
    registry.register("chaos:flaky", recorded("chaos:flaky", flaky))
    registry.register("chaos:beat", recorded("chaos:beat", beat))
    registry.register("chaos:tick", recorded("chaos:tick", tick))
    registry.register("chaos:die", die)
