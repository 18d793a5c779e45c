"""The faults production brings besides crashes (issue 14), for tests/chaos/test_faults.py:
each is applied to the harness's own PostgreSQL or Redis and lifted again.

- PostgreSQL read-only, as after a failover to a replica: default_transaction_read_only
  on, configuration reloaded, every session of the application terminated (they come
  back read-only); lifted by resetting it.
- Every connection terminated (pg_terminate_backend, no restart).
- A lock on the events table (ACCESS EXCLUSIVE, in an open transaction), as a migration
  or a long maintenance statement holds it.
- Redis refuses writes: maxmemory below what it uses, or just above, noeviction.
- Redis drops every client connection (CLIENT KILL TYPE normal).
- Redis pauses its clients (CLIENT PAUSE).
- A skewed clock: libfaketime (Debian's ``faketime``) preloaded into one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import asyncpg
import redis.asyncio as aioredis

# The sessions of the application: every client backend but the one asking.
TERMINATE_SESSIONS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"""

LIBFAKETIME_PATHS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


async def _admin(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    # This session must stay writable whatever the server's default becomes.
    await conn.execute("SET default_transaction_read_only = off")
    return conn


async def terminate_sessions(database_url: str) -> int:
    """Terminate every session of the application; returns how many."""
    conn = await _admin(database_url)
    try:
        return int(await conn.fetchval(TERMINATE_SESSIONS))
    finally:
        await conn.close()


async def postgres_read_only(database_url: str, on: bool) -> None:
    """Turn PostgreSQL read-only (on) or writable again. Turning it on also terminates
    the application's sessions, as a failover would: they reconnect read-only."""
    conn = await _admin(database_url)
    try:
        if on:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await conn.fetchval("SELECT pg_reload_conf()")
        if on:
            await asyncio.sleep(0.2)  # the postmaster has signalled the backends
            await conn.fetchval(TERMINATE_SESSIONS)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def events_locked(database_url: str) -> AsyncIterator[None]:
    """Hold ACCESS EXCLUSIVE on the events table while the block runs."""
    conn = await _admin(database_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


async def redis_refuse_writes(redis_url: str, how: Literal["full", "edge", "off"]) -> None:
    """Redis out of memory with noeviction: "full" sets maxmemory below what it uses (every
    write refused), "edge" just above (writes refused or not as memory comes and goes),
    "off" lifts the limit."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        if how == "off":
            await client.config_set("maxmemory", "0")
        else:
            await client.config_set("maxmemory-policy", "noeviction")
            used = int((await client.info("memory"))["used_memory"])
            # Full: half, as client buffers freed would let writes through again.
            limit = max(used // 2, 1024 * 1024) if how == "full" else used + 1024
            await client.config_set("maxmemory", str(limit))
    finally:
        await client.aclose()


async def redis_kill_clients(redis_url: str) -> int:
    """CLIENT KILL TYPE normal (every client connection but this one); returns how many."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int(await client.execute_command("CLIENT", "KILL", "TYPE", "normal"))
    finally:
        await client.aclose()


async def redis_pause(redis_url: str, ms: int) -> None:
    """CLIENT PAUSE ``ms`` (every command of every client waits); returns at once."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.execute_command("CLIENT", "PAUSE", str(ms))
    finally:
        await client.aclose()


def libfaketime() -> Path | None:
    """The libfaketime library, installed from Debian's ``faketime`` package when it is
    missing and this runs as root with apt-get (as .ci/run does); None when unavailable."""

    def found() -> Path | None:
        return next((Path(p) for p in LIBFAKETIME_PATHS if Path(p).exists()), None)

    if (path := found()) is not None:
        return path
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "faketime"],
            check=False,
            capture_output=True,
            timeout=300,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return found()


def skewed_clock_env(library: Path, offset: str) -> dict[str, str]:
    """The environment that runs a process with its wall clock ``offset`` (e.g. "+45s")
    from the real one. The monotonic clock is left alone: a skew moves the wall clock."""
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
