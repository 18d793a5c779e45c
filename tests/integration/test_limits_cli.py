"""``steplog limits`` against real servers: overrides land in PostgreSQL and a running
API's limiter (another process) applies them once its cache expires."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis

from engine.adapters.bus import BucketLimit, TokenBuckets
from engine.adapters.limits_store import LimitsStore
from engine.limits import Limits
from steplog.settings import Settings
from tests.integration.test_cli import _steplog


async def test_limits_set_show_and_reset(
    settings: Settings, pool: asyncpg.Pool, redis: Redis
) -> None:
    code, out, err = await _steplog(
        settings, "limits", "set", "team-a", "--starts", "5/10", "--key-reads", "2.5/4",
        "--running", "7",
    )  # fmt: skip
    assert code == 0, err
    assert "starts  namespace 5/s burst 10" in out and "running quota 7" in out
    assert "reads   namespace 5000/s burst 10000; per key 2.5/s burst 4" in out
    # What an API process of other settings reads (its cache is empty: no wait).
    limits = Limits(
        LimitsStore(pool), TokenBuckets(redis, settings.redis_prefix), settings.limit_defaults()
    )
    now = await limits.of("team-a")
    assert now.namespace["starts"] == BucketLimit(5.0, 10) and now.running_max == 7
    assert now.key["reads"] == BucketLimit(2.5, 4)
    code, out, _ = await _steplog(settings, "limits", "show", "other")
    assert code == 0 and "running quota none" in out
    code, out, _ = await _steplog(settings, "limits", "reset", "team-a")
    assert code == 0 and "starts  namespace 500/s burst 1000" in out
    # Both changes are in the audit trail, newest first; showing changes nothing.
    rows = await pool.fetch(
        "SELECT action, target, details::text AS details, remote FROM audit_log"
        " WHERE action LIKE 'limits.%' ORDER BY id DESC"
    )
    assert [(r["action"], r["target"], r["remote"]) for r in rows] == [
        ("limits.reset", "team-a", "steplog cli"),
        ("limits.set", "team-a", "steplog cli"),
    ]
    assert '"running":7' in rows[1]["details"].replace(" ", "")


@pytest.mark.parametrize(
    "args",
    [
        ("set", "ns"),
        ("set", "ns", "--starts", "0/10"),
        ("set", "ns", "--reads", "10"),
        ("set", "ns", "--running", "-1"),
    ],
)
async def test_limits_set_refuses_bad_values(settings: Settings, args: tuple[str, ...]) -> None:
    code, _, err = await _steplog(settings, "limits", *args)
    assert code == 2 and "steplog" in err
