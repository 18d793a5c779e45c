"""Issue 10, item 3: three `steplog serve` API processes on one Redis hold one
namespace's limit together (within +-10% over a few seconds)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.chaos.harness import Cluster

RATE_PER_S = 100
BURST = 20
HAMMER_S = 3.0


@pytest.mark.timeout(180)
async def test_three_api_processes_hold_one_namespace_limit(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    cluster = Cluster(
        database_url,
        redis_url,
        tmp_path / "pg-unused",
        tmp_path,
        3,
        roles="api",
        env={
            "STEPLOG_REDIS_PREFIX": redis_prefix,
            "STEPLOG_RATE_LIMITS": f"starts=10/10,writes=10/10,reads={RATE_PER_S}/{BURST}",
        },
    )
    try:
        await asyncio.gather(*(cluster.start(i) for i in range(3)))
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession() as http:

            async def hammer(i: int, deadline: float) -> None:
                url = cluster.url(i % 3) + "/v1/workflows"
                while time.monotonic() < deadline:
                    async with http.get(url) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1

            started = time.monotonic()
            await asyncio.gather(*(hammer(i, started + HAMMER_S) for i in range(24)))
            elapsed = time.monotonic() - started
        expected = BURST + RATE_PER_S * elapsed
        allowed = statuses.get(200, 0)
        print(f"3 processes: {allowed} allowed, {expected:.0f} expected, {statuses}")
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.get(429, 0) > allowed, statuses  # the offered load was over the limit
        assert abs(allowed - expected) <= 0.1 * expected, (allowed, expected, statuses)
    finally:
        await cluster.stop_all()
