"""The limits facade: rate limits shared by all API processes and the RUNNING quota.

Three budgets: ``starts`` (POST /v1/workflows/{name}/executions), ``writes`` (every
other PUT, POST, PATCH or DELETE) and ``reads`` (GET, HEAD). Each has a token bucket per
namespace and one per API key inside it; a request passes only when both hold a token
(engine.adapters.bus.TokenBuckets: one Lua script, one round trip, Redis's clock; the
takes of a namespace asked for at once share a run). A request without a key id
(authentication off) takes from the namespace bucket only.

Limits of a namespace: the defaults of the settings, overridden per namespace, budget and
scope in PostgreSQL (migration 0007). Each process caches a namespace's overrides for
``cache_s`` seconds (5 by default), so a change reaches every API process within that
time, without a restart.

Redis away (`Unavailable`, or no answer within ``TAKE_TIMEOUT_S``: a paused, hung or
overloaded Redis): reads pass (fail open), starts and other writes are refused with
`Unavailable` (503, fail closed); each such decision is counted in
``steplog_rate_limit_fail_total{decision, budget}``.

The RUNNING quota: a start in a namespace that already has ``running_max`` RUNNING
executions is refused with `RunningQuotaExceeded` (429 ``running_quota_exceeded``);
0 means no quota. The count is the one the database keeps in the append transaction
(`LimitsStore.running`), so it is exact as committed; concurrent starts checked at the
same moment may each see room, so the quota can be passed by at most the number of
starts in flight at once in that namespace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import msgspec
from prometheus_client import Counter

from engine.adapters.bus import BucketLimit, TakeResult, TokenBuckets
from engine.adapters.limits_store import LimitsStore, NamespaceOverrides
from engine.errors import RunningQuotaExceeded, Unavailable

log = logging.getLogger("steplog.limits")

BUDGETS: tuple[str, ...] = ("starts", "writes", "reads")
SCOPES: tuple[str, ...] = ("namespace", "key")
DEFAULT_CACHE_S = 5.0
# How long a request waits for its tokens: Redis slower than this (e.g. writes paused:
# the script may write) counts as away, so reads are not held up by it.
TAKE_TIMEOUT_S = 1.0
# Namespaces whose overrides one process caches at most (beyond, the cache starts over).
_CACHE_ENTRIES = 10_000

RATE_LIMIT_FAIL = Counter(
    "steplog_rate_limit_fail",
    "Rate-limit decisions taken without Redis (it did not answer), by decision: open "
    "(the request passed unlimited: reads) or closed (refused with 503: starts and "
    "other writes), and budget (starts, writes, reads).",
    ("decision", "budget"),
)

RateTable = Mapping[str, BucketLimit]


def parse_rates(spec: str) -> dict[str, BucketLimit]:
    """``"starts=100/200,writes=500/1000,reads=2000/4000"``: per budget, the refill rate
    (tokens per second) and the bucket size. Every budget must be given once. ValueError
    says what is wrong."""
    rates: dict[str, BucketLimit] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        budget, eq, value = part.partition("=")
        rate_text, slash, burst_text = value.partition("/")
        budget = budget.strip()
        if not eq or not slash or budget not in BUDGETS:
            raise ValueError(f"expected BUDGET=RATE/BURST with BUDGET in {BUDGETS}, got {part!r}")
        if budget in rates:
            raise ValueError(f"budget {budget!r} given twice")
        try:
            rates[budget] = bucket_limit(float(rate_text), int(burst_text))
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
    missing = [b for b in BUDGETS if b not in rates]
    if missing:
        raise ValueError(f"no limit for {', '.join(missing)}")
    return rates


def bucket_limit(rate_per_s: float, burst: int) -> BucketLimit:
    """A checked bucket limit: 0 < rate <= 1,000,000 per second, 1 <= burst <= 10,000,000
    (the bounds of migration 0007)."""
    if not 0 < rate_per_s <= 1_000_000:
        raise ValueError("the rate must be above 0 and at most 1000000 per second")
    if not 1 <= burst <= 10_000_000:
        raise ValueError("the burst must be 1 to 10000000")
    return BucketLimit(rate_per_s=float(rate_per_s), burst=burst)


class LimitDefaults(msgspec.Struct, frozen=True, kw_only=True):
    """The limits of a namespace without overrides (steplog.settings)."""

    namespace: dict[str, BucketLimit]
    key: dict[str, BucketLimit]
    running_max: int = 0
    cache_s: float = DEFAULT_CACHE_S


class NamespaceLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits in force for one namespace: per budget, its bucket and each key's."""

    namespace: dict[str, BucketLimit]
    key: dict[str, BucketLimit]
    running_max: int


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """A rate-limit check's outcome. ``result`` is None when Redis did not answer and
    the request passed unlimited (fail open)."""

    budget: str
    allowed: bool
    result: TakeResult | None = None


class Limits:
    """Rate limits and the RUNNING quota for every namespace (see the module doc).
    ``buckets`` None: no rate limits (only the quota and the overrides' storage)."""

    def __init__(
        self,
        store: LimitsStore,
        buckets: TokenBuckets | None,
        defaults: LimitDefaults,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.buckets = buckets
        self.defaults = defaults
        self._clock = clock
        self._cache: dict[str, tuple[float, NamespaceLimits]] = {}
        self._loading: dict[str, asyncio.Task[NamespaceLimits]] = {}

    # -- what is in force -----------------------------------------------------------------

    def merge(self, overrides: NamespaceOverrides) -> NamespaceLimits:
        """The defaults with ``overrides`` applied."""
        tables = {"namespace": dict(self.defaults.namespace), "key": dict(self.defaults.key)}
        for o in overrides.rates:
            tables[o.scope][o.budget] = BucketLimit(rate_per_s=o.rate_per_s, burst=o.burst)
        running_max = overrides.running_max
        return NamespaceLimits(
            namespace=tables["namespace"],
            key=tables["key"],
            running_max=self.defaults.running_max if running_max is None else running_max,
        )

    async def of(self, namespace: str) -> NamespaceLimits:
        """The limits of ``namespace``, at most ``cache_s`` old. PostgreSQL not answering:
        the last known limits, else the defaults (logged)."""
        now = self._clock()
        cached = self._cache.get(namespace)
        if cached is not None and cached[0] > now:
            return cached[1]
        task = self._loading.get(namespace)
        if task is None:
            # One load per namespace at a time, however many requests wait for it.
            task = asyncio.ensure_future(self._load(namespace))
            self._loading[namespace] = task
            task.add_done_callback(lambda _: self._loading.pop(namespace, None))
        try:
            return await asyncio.shield(task)
        except Unavailable as exc:
            log.warning("limits of %r not readable (%r); using the last known", namespace, exc)
            return cached[1] if cached is not None else self.merge(NamespaceOverrides())

    async def _load(self, namespace: str) -> NamespaceLimits:
        limits = self.merge(await self.store.overrides(namespace))
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[namespace] = (self._clock() + self.defaults.cache_s, limits)
        return limits

    # -- rate limits ----------------------------------------------------------------------

    async def check(self, namespace: str, key_id: str | None, budget: str) -> Decision:
        """Take a token of ``budget`` from the namespace's bucket and (with a key id) the
        key's. Redis away: reads pass unlimited, other budgets raise Unavailable."""
        if self.buckets is None:
            return Decision(budget=budget, allowed=True)
        limits = await self.of(namespace)
        keys = self.buckets.keys
        wanted = [(keys.rate_bucket(namespace, budget), limits.namespace[budget])]
        if key_id is not None:
            wanted.append((keys.rate_bucket(namespace, budget, key_id), limits.key[budget]))
        try:
            try:
                async with asyncio.timeout(TAKE_TIMEOUT_S):
                    result = await self.buckets.take(wanted)
            except TimeoutError as exc:
                raise Unavailable(f"Redis did not answer within {TAKE_TIMEOUT_S:g} s") from exc
        except Unavailable:
            if budget == "reads":
                RATE_LIMIT_FAIL.labels("open", budget).inc()
                return Decision(budget=budget, allowed=True)
            RATE_LIMIT_FAIL.labels("closed", budget).inc()
            raise
        return Decision(budget=budget, allowed=result.allowed, result=result)

    # -- the RUNNING quota ----------------------------------------------------------------

    async def admit_start(self, namespace: str) -> None:
        """RunningQuotaExceeded when ``namespace`` already runs its quota of executions."""
        running_max = (await self.of(namespace)).running_max
        if running_max <= 0:
            return
        running = await self.store.running(namespace)
        if running >= running_max:
            raise RunningQuotaExceeded(
                f"namespace {namespace!r} has {running} RUNNING executions; its quota is "
                f"{running_max}"
            )

    # -- administration (steplog limits ...) ----------------------------------------------

    async def set_rate(
        self, namespace: str, budget: str, scope: str, rate_per_s: float, burst: int
    ) -> None:
        """Override one bucket of ``namespace`` (every process within ``cache_s``)."""
        if budget not in BUDGETS or scope not in SCOPES:
            raise ValueError(f"budget must be one of {BUDGETS} and scope one of {SCOPES}")
        limit = bucket_limit(rate_per_s, burst)
        await self.store.set_rate(namespace, budget, scope, limit.rate_per_s, limit.burst)
        self._cache.pop(namespace, None)

    async def set_running_max(self, namespace: str, running_max: int) -> None:
        if not 0 <= running_max <= 2**31 - 1:
            raise ValueError("the running quota must be 0 (none) to 2147483647")
        await self.store.set_running_max(namespace, running_max)
        self._cache.pop(namespace, None)

    async def reset(self, namespace: str) -> None:
        await self.store.reset(namespace)
        self._cache.pop(namespace, None)
