"""Issue 10, item 3: token buckets in Redis (engine.adapters.bus.TokenBuckets), the
limits facade (engine/limits.py) with its PostgreSQL overrides, and the RUNNING quota
against the count migration 0007 keeps. Real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis

from engine.adapters.bus import BucketLimit, Keys, TokenBuckets
from engine.adapters.limits_store import LimitsStore
from engine.adapters.store import EventStore
from engine.core.triggers import Begin
from engine.errors import RunningQuotaExceeded
from engine.limits import LimitDefaults, Limits, parse_rates
from engine.service import EngineService

PASS = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}
WAIT = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "End": True}}}


def defaults(running_max: int = 0, cache_s: float = 5.0) -> LimitDefaults:
    return LimitDefaults(
        namespace=parse_rates("starts=10/5,writes=10/5,reads=10/5"),
        key=parse_rates("starts=10/3,writes=10/3,reads=10/3"),
        running_max=running_max,
        cache_s=cache_s,
    )


async def test_buckets_refill_at_the_configured_rate(redis: Redis, redis_prefix: str) -> None:
    buckets = TokenBuckets(redis, redis_prefix)
    key = buckets.keys.rate_bucket("ns", "reads")
    limit = BucketLimit(rate_per_s=100.0, burst=10)
    while (await buckets.take([(key, limit)])).allowed:  # empty the bucket
        pass
    allowed = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.0:
        if (await buckets.take([(key, limit)])).allowed:
            allowed += 1
    elapsed = time.monotonic() - started
    expected = 100.0 * elapsed
    assert abs(allowed - expected) <= 0.1 * expected, (allowed, expected)


async def test_a_full_bucket_gives_its_burst_then_refuses_with_the_wait(
    redis: Redis, redis_prefix: str
) -> None:
    buckets = TokenBuckets(redis, redis_prefix)
    key = buckets.keys.rate_bucket("ns", "starts")
    limit = BucketLimit(rate_per_s=0.5, burst=3)
    results = [await buckets.take([(key, limit)]) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert all(r.limit == 3 for r in results)
    refused = results[-1]
    assert 1.0 < refused.retry_after_s <= 2.0  # one token at 0.5/s
    assert 5.0 < refused.reset_s <= 6.0  # three tokens at 0.5/s


async def test_takes_asked_together_share_one_script_run_and_each_counts(
    redis: Redis, redis_prefix: str
) -> None:
    buckets = TokenBuckets(redis, redis_prefix)
    limit = BucketLimit(rate_per_s=0.01, burst=5)
    first, second = (buckets.keys.rate_bucket(ns, "starts") for ns in ("one", "two"))
    await buckets.take([(buckets.keys.rate_bucket("warm", "starts"), limit)])  # (the script loaded)
    runs = (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"]
    # 20 takes of one namespace, 3 of another and 2 of a key inside the first, asked in
    # one turn of the loop: one run per namespace (hash slot), each take in order.
    key = buckets.keys.rate_bucket("one", "starts", "k1")
    results = await asyncio.gather(
        *(buckets.take([(first, limit)]) for _ in range(20)),
        *(buckets.take([(second, limit)]) for _ in range(3)),
        *(buckets.take([(first, limit), (key, limit)]) for _ in range(2)),
    )
    assert (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"] - runs == 2
    assert [r.allowed for r in results[:20]] == [True] * 5 + [False] * 15
    assert [r.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    assert all(r.retry_after_s > 0 for r in results[5:20])
    assert [r.allowed for r in results[20:23]] == [True] * 3
    # The namespace's bucket was empty by then: all or nothing, the key's bucket is full.
    assert [r.allowed for r in results[23:]] == [False, False]
    assert (await buckets.take([(key, limit)])).remaining == 4
    # A caller that stops waiting leaves the others' takes alone.
    waiting = asyncio.ensure_future(buckets.take([(second, limit)]))
    kept = asyncio.ensure_future(buckets.take([(second, limit)]))
    await asyncio.sleep(0)
    waiting.cancel()
    assert (await kept).allowed


async def test_a_take_is_all_or_nothing_over_the_key_and_namespace_buckets(
    redis: Redis, redis_prefix: str
) -> None:
    buckets = TokenBuckets(redis, redis_prefix)
    ns_key = buckets.keys.rate_bucket("ns", "writes")
    key_a = buckets.keys.rate_bucket("ns", "writes", "key-a")
    key_b = buckets.keys.rate_bucket("ns", "writes", "key-b")
    slow = 0.001
    ns_limit = BucketLimit(rate_per_s=slow, burst=5)
    key_limit = BucketLimit(rate_per_s=slow, burst=2)
    a = [await buckets.take([(ns_key, ns_limit), (key_a, key_limit)]) for _ in range(3)]
    assert [r.allowed for r in a] == [True, True, False]
    # The refused take of key-a left the namespace's tokens alone: 3 remain for key-b.
    b = [await buckets.take([(ns_key, ns_limit), (key_b, key_limit)]) for _ in range(3)]
    assert [r.allowed for r in b] == [True, True, False]
    assert b[1].remaining == 0 and b[1].limit == 2  # the key's bucket is the tightest
    last = await buckets.take([(ns_key, ns_limit)])
    assert last.allowed and last.remaining == 0 and last.limit == 5


async def test_the_script_is_loaded_again_after_a_script_flush(
    redis: Redis, redis_prefix: str
) -> None:
    buckets = TokenBuckets(redis, redis_prefix)
    key = buckets.keys.rate_bucket("ns", "reads")
    limit = BucketLimit(rate_per_s=1.0, burst=5)
    assert (await buckets.take([(key, limit)])).allowed
    await redis.script_flush()
    second = await buckets.take([(key, limit)])
    assert second.allowed and second.remaining == 3


def test_bucket_keys_of_one_namespace_share_a_hash_tag() -> None:
    keys = Keys("p")
    assert keys.rate_bucket("ns", "reads") == "{p:rl:ns}:reads"
    assert keys.rate_bucket("ns", "reads", "k1") == "{p:rl:ns}:reads:k:k1"
    assert keys.rate_bucket("a{b}", "reads", "k}") == "{p:rl:a%7Bb%7D}:reads:k:k%7D"


def test_rate_specs_are_checked() -> None:
    assert parse_rates("starts=1.5/2, writes=3/4,reads=5/6")["starts"] == BucketLimit(1.5, 2)
    for bad in ("starts=1/2", "starts=1/2,writes=1/2,reads=0/1", "x=1/1", "starts=1,"):
        with pytest.raises(ValueError):
            parse_rates(bad)


async def test_overrides_reach_a_process_after_its_cache_expires(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str
) -> None:
    now = [0.0]
    reader = Limits(
        LimitsStore(pool), TokenBuckets(redis, redis_prefix), defaults(), clock=lambda: now[0]
    )
    writer = Limits(LimitsStore(pool), None, defaults())
    assert (await reader.of("ns")).namespace["starts"] == BucketLimit(10.0, 5)
    await writer.set_rate("ns", "starts", "namespace", 2.0, 7)
    await writer.set_running_max("ns", 3)
    assert (await reader.of("ns")).namespace["starts"] == BucketLimit(10.0, 5)  # cached
    now[0] += 5.01
    fresh = await reader.of("ns")
    assert fresh.namespace["starts"] == BucketLimit(2.0, 7)
    assert fresh.key["starts"] == BucketLimit(10.0, 3) and fresh.running_max == 3
    await writer.reset("ns")
    now[0] += 5.01
    assert (await reader.of("ns")).running_max == 0


async def test_the_running_quota_refuses_the_start_past_it(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, redis_prefix: str
) -> None:
    limits = Limits(LimitsStore(pool), TokenBuckets(redis, redis_prefix), defaults(running_max=2))
    service = EngineService(store, limits=limits)
    now = dt.datetime.now(dt.UTC)
    await service.register("default", "wait", WAIT)
    first, *_ = await service.start("default", "wait", {}, "one", now)
    await service.start("default", "wait", {}, "two", now)
    assert await limits.store.running("default") == 2
    with pytest.raises(RunningQuotaExceeded) as refused:
        await service.start("default", "wait", {}, "three", now)
    assert refused.value.code == "running_quota_exceeded" and refused.value.status == 429
    # The same name again is the same execution, quota or not (idempotency).
    again, created, *_ = await service.start("default", "wait", {}, "two", now)
    assert not created and again.name == "two"
    # Another namespace has its own count.
    await service.register("other", "wait", WAIT)
    await service.start("other", "wait", {}, "one", now)
    # An ended execution frees its place.
    await service.stop(first.execution_id, None, None, now)
    assert await limits.store.running("default") == 1
    await service.start("default", "wait", {}, "three", now)
    assert await limits.store.running("default") == 2


async def test_the_running_count_follows_the_event_log(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    service = EngineService(store)
    now = dt.datetime.now(dt.UTC)
    await service.register("default", "pass", PASS)
    await service.register("default", "wait", WAIT)
    passes = [await service.start("default", "pass", {}, f"p{i}", now) for i in range(5)]
    waits = [await service.start("default", "wait", {}, f"w{i}", now) for i in range(3)]
    for record, *_ in passes:  # run each Pass execution to its end
        state = await service.load_state(record.execution_id)
        await service.apply(state, Begin(now=now))
    await service.stop(waits[0][0].execution_id, None, None, now)
    counted = await LimitsStore(pool).running("default")
    assert counted == len(await store.running_executions("default")) == 2


async def test_concurrent_takes_from_many_clients_never_overspend(
    redis: Redis, redis_prefix: str, redis_url: str
) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(4)]
    try:
        key = Keys(redis_prefix).rate_bucket(f"ns-{uuid.uuid4().hex}", "starts")
        limit = BucketLimit(rate_per_s=0.001, burst=50)

        async def hammer(client: Redis) -> int:
            buckets = TokenBuckets(client, redis_prefix)
            return sum([(await buckets.take([(key, limit)])).allowed for _ in range(40)])

        assert sum(await asyncio.gather(*(hammer(c) for c in clients))) == 50
    finally:
        for c in clients:
            await c.aclose()


async def test_a_key_is_held_to_its_own_bucket_inside_the_namespace(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str
) -> None:
    limits = Limits(LimitsStore(pool), TokenBuckets(redis, redis_prefix), defaults())
    key_reads = [(await limits.check("ns", "k1", "reads")).allowed for _ in range(4)]
    assert key_reads == [True, True, True, False]  # the key's burst is 3
    other = await limits.check("ns", "k2", "reads")
    assert other.allowed and other.result is not None and other.result.remaining == 1
    ns_only = await limits.check("ns", None, "reads")  # the namespace's 5th token
    assert ns_only.allowed and ns_only.result is not None and ns_only.result.remaining == 0
    assert not (await limits.check("ns", "k3", "reads")).allowed
