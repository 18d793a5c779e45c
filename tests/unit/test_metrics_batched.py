"""The engine's metrics counted in batches (engine.loops.metrics) give exactly what
counting one by one gives: a histogram observed ``count`` times at once, and a relay
batch's lags observed once per run of events that share a timestamp."""

from __future__ import annotations

import datetime as dt
import math
from uuid import uuid4

import pytest
from prometheus_client import CollectorRegistry, Histogram

from engine.adapters.store import StoredEvent
from engine.loops import metrics


def _samples(histogram: Histogram) -> dict[str, float]:
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _pair() -> tuple[Histogram, Histogram]:
    buckets = (0.001, 0.01, 0.1, 1.0)
    return (
        Histogram("h", "h", buckets=buckets, registry=CollectorRegistry()),
        Histogram("h", "h", buckets=buckets, registry=CollectorRegistry()),
    )


@pytest.mark.parametrize("amount", [0.0, 0.001, 0.0011, 0.5, 1.0, 7.0])
@pytest.mark.parametrize("count", [1, 2, 22])
def test_observing_many_at_once_equals_observing_them_one_by_one(amount: float, count: int) -> None:
    at_once, one_by_one = _pair()
    metrics.observe_many(at_once, amount, count)
    for _ in range(count):
        one_by_one.observe(amount)
    assert _samples(at_once) == pytest.approx(_samples(one_by_one))


def test_a_relay_batch_observes_each_events_lag() -> None:
    t0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    stamps = [t0] * 3 + [t0 + dt.timedelta(milliseconds=40)] * 2 + [t0] + [t0]
    events = [
        StoredEvent(uuid4(), i + 1, i, "PassStateEntered", b"{}", at) for i, at in enumerate(stamps)
    ]
    now = t0 + dt.timedelta(milliseconds=50)
    before = _samples(metrics.RELAY_LAG_SECONDS)
    metrics.observe_published(events, now)
    after = _samples(metrics.RELAY_LAG_SECONDS)
    moved = {k: after[k] - before.get(k, 0.0) for k in after}
    # Other tests observed the process-wide histogram before (lags of months, from
    # fixed test timestamps): its sum is large, and the difference keeps only its
    # precision.
    tolerance = 4 * math.ulp(after["steplog_relay_lag_seconds_sum[]"])
    expected = Histogram(
        "steplog_relay_lag_seconds",
        "x",
        buckets=metrics.RELAY_LAG_SECONDS._upper_bounds,
        registry=CollectorRegistry(),
    )
    for at in stamps:
        expected.observe((now - at).total_seconds())
    assert moved == pytest.approx(_samples(expected), abs=tolerance)
