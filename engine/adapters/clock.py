"""PostgreSQL's clock: the one clock of durable time (DESIGN invariant 8).

Due times, event timestamps, timeouts and the times the API records are read from
`DbClock.now`, never from this process's wall clock: every process then agrees on
what "now" is, whatever its own clock says, so a process whose clock runs ahead fires
nothing early and records nothing in the future. Reading PostgreSQL for every "now"
would cost a round trip per decision, so `sample` reads ``clock_timestamp()`` now and
then (the best of a few round trips, taken at the round trip's midpoint, as NTP does)
and `now` is that reading plus the monotonic time elapsed since. The monotonic clock
only measures intervals, so a wall clock that is wrong, or is stepped, changes nothing.
Between samples the estimate drifts only by the rate error of the monotonic clock
(parts per million); its error after a sample is at most half the round trip
(`uncertainty_s`).

`offset_s` is PostgreSQL's clock minus this process's wall clock at the last sample:
what engine.loops.clock reports (a warning, steplog_clock_offset_seconds).

Timer claims compare due times with ``clock_timestamp()`` inside their own statement
(engine.adapters.store), so no process's estimate decides when a timer fires.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import asyncpg

from engine.adapters.postgres import translate_errors

SAMPLE = "SELECT clock_timestamp()"


class DbClock:
    """PostgreSQL's clock as seen from this process; call `sample` once before `now`.

    ``monotonic`` and ``wall`` are this process's clocks (seconds; injectable for
    tests): the first measures elapsed time, the second is only compared with
    PostgreSQL's to report the offset."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        rounds: int = 3,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._rounds = max(1, rounds)
        self._monotonic = monotonic
        self._wall = wall
        self._base: dt.datetime | None = None  # PostgreSQL's time at _base_mono
        self._base_mono = 0.0
        self._last = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.offset_s = 0.0
        self.uncertainty_s = 0.0
        self.samples = 0

    @property
    def sampled(self) -> bool:
        return self._base is not None

    async def sample(self) -> float:
        """Read PostgreSQL's clock (the tightest of ``rounds`` round trips on one
        connection) and base `now` on it; returns `offset_s`. Raises `Unavailable` when
        PostgreSQL does not answer (`now` keeps counting from the last sample)."""
        best: tuple[float, dt.datetime, float, float] | None = None
        with translate_errors():
            async with self._pool.acquire() as conn:
                for _ in range(self._rounds):
                    m0, w0 = self._monotonic(), self._wall()
                    server: dt.datetime = await conn.fetchval(SAMPLE)
                    m1, w1 = self._monotonic(), self._wall()
                    if best is None or m1 - m0 < best[0]:
                        best = (m1 - m0, server, (m0 + m1) / 2, (w0 + w1) / 2)
        assert best is not None
        round_trip, server, mono_mid, wall_mid = best
        self._base, self._base_mono = server, mono_mid
        self.offset_s = server.timestamp() - wall_mid
        self.uncertainty_s = round_trip / 2
        self.samples += 1
        return self.offset_s

    def now(self) -> dt.datetime:
        """PostgreSQL's current time (UTC, whole milliseconds, as histories show times),
        never earlier than a time this clock returned before. RuntimeError before the
        first `sample`."""
        if self._base is None:
            raise RuntimeError("DbClock.now() before the first sample()")
        t = self._base + dt.timedelta(seconds=self._monotonic() - self._base_mono)
        t -= dt.timedelta(microseconds=t.microsecond % 1000)
        if t < self._last:
            # A new sample may put the estimate a fraction of a millisecond back.
            return self._last
        self._last = t
        return t


__all__ = ["SAMPLE", "DbClock"]
