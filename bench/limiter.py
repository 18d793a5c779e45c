"""Benchmark: what the rate limiter costs per request (issue 10, item 3).

Measured in alternating rounds in the same run, one request at a time (latency) and
with 64 in flight (throughput), against the ceiling of a bare Redis PING round trip:

- ping: ``PING``, the least a check in Redis can cost (one round trip);
- take: `TokenBuckets.take` of a namespace bucket and a key bucket (the Lua script by
  EVALSHA: refill and take both, one round trip);
- check: `Limits.check` as the middleware calls it (cached overrides + take).

    .venv/bin/python bench/limiter.py [--requests 5000] [--rounds 3]
    .venv/bin/python bench/limiter.py --database-url postgresql://... --redis-url redis://...

Without URLs it starts embedded servers under a temporary folder. Run by hand; never
part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from engine.adapters.bus import BucketLimit, TokenBuckets
from engine.adapters.limits_store import LimitsStore
from engine.limits import LimitDefaults, Limits, parse_rates
from steplog.embedded import embedded_servers
from steplog.migrate import migrate

PREFIX = "benchlimiter"
# Limits no run reaches: every take succeeds, as for a client under its limit.
ROOMY = "starts=1000000/10000000,writes=1000000/10000000,reads=1000000/10000000"


@contextlib.asynccontextmanager
async def urls(args: argparse.Namespace) -> AsyncIterator[tuple[str, str]]:
    if args.database_url and args.redis_url:
        yield args.database_url, args.redis_url
        return
    with tempfile.TemporaryDirectory() as tmp:
        async with embedded_servers(Path(tmp), durable=False) as (db, rd):
            yield db, rd


async def sequential(call: Callable[[], Awaitable[object]], n: int) -> float:
    """Microseconds per call, one at a time."""
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n * 1e6


async def concurrent(call: Callable[[], Awaitable[object]], n: int, width: int = 64) -> float:
    """Calls per second with ``width`` in flight."""
    per = n // width

    async def lane() -> None:
        for _ in range(per):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(width)))
    return per * width / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    async with urls(args) as (database_url, redis_url):
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        redis = Redis.from_url(redis_url)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            buckets = TokenBuckets(redis, PREFIX)
            rates = parse_rates(ROOMY)
            limits = Limits(
                LimitsStore(pool),
                buckets,
                LimitDefaults(namespace=rates, key=rates, cache_s=3600),
            )
            limit = BucketLimit(rate_per_s=1e6, burst=10_000_000)
            pair = [
                (buckets.keys.rate_bucket("bench", "reads"), limit),
                (buckets.keys.rate_bucket("bench", "reads", "key-1"), limit),
            ]
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "ping": redis.ping,
                "take": lambda: buckets.take(pair),
                "check": lambda: limits.check("bench", "key-1", "reads"),
            }
            for call in calls.values():  # warm up: connections, script cache, overrides
                await sequential(call, 200)
            latency: dict[str, list[float]] = {k: [] for k in calls}
            rate: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    latency[name].append(await sequential(call, args.requests))
                    rate[name].append(await concurrent(call, args.requests))
            ping_us = statistics.median(latency["ping"])
            ping_rate = statistics.median(rate["ping"])
            print(f"{'':8}{'us/call':>10}{'x PING':>8}{'calls/s (64)':>15}{'of PING':>9}")
            for name in calls:
                us = statistics.median(latency[name])
                per_s = statistics.median(rate[name])
                print(f"{name:8}{us:10.1f}{us / ping_us:8.2f}{per_s:15.0f}{per_s / ping_rate:9.2f}")
        finally:
            await redis.delete(*[k async for k in redis.scan_iter(match=f"{{{PREFIX}:*")] or ["-"])
            await redis.aclose()
            await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    asyncio.run(main(parser.parse_args()))
