"""Keeps this process's reading of PostgreSQL's clock fresh, and says when its own
clock is far from it.

Every process reads durable time from `engine.adapters.clock.DbClock` (DESIGN
invariant 8). `ClockWatch` samples it every ``interval_s`` seconds, sets
``steplog_clock_offset_seconds`` (PostgreSQL's clock minus this process's wall clock)
and logs a warning when the offset goes beyond ``warn_offset_s`` (again when it moves
by that much more, and once when it is back within): nothing this process records
depends on its wall clock, but the operator should know that it is wrong.
"""

from __future__ import annotations

import asyncio
import logging

from engine.adapters.clock import DbClock
from engine.loops import metrics
from engine.stopping import sleep_or_stop

log = logging.getLogger("steplog.clock")


class ClockWatch:
    def __init__(
        self,
        clock: DbClock,
        *,
        interval_s: float = 10.0,
        warn_offset_s: float = 1.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self.warn_offset_s = warn_offset_s
        self.retry_delay_s = retry_delay_s
        self._warned: float | None = None  # the offset last warned about

    async def check(self) -> float:
        """Sample once, report; returns the offset (`Unavailable` when PostgreSQL does
        not answer)."""
        offset = await self.clock.sample()
        self.report(offset)
        return offset

    def report(self, offset: float) -> None:
        """Set the gauge; warn when ``offset`` is too large (once per move of
        ``warn_offset_s``), note when it is back within."""
        metrics.CLOCK_OFFSET_SECONDS.set(offset)
        if abs(offset) > self.warn_offset_s:
            if self._warned is None or abs(offset - self._warned) > self.warn_offset_s:
                self._warned = offset
                log.warning(
                    "this process's clock is %.3fs %s PostgreSQL's (more than %.3gs): durable "
                    "time is PostgreSQL's, so nothing fires early, but fix the clock "
                    "(NTP); logs and local measurements use it",
                    abs(offset),
                    "behind" if offset > 0 else "ahead of",
                    self.warn_offset_s,
                )
        elif self._warned is not None:
            self._warned = None
            log.warning("this process's clock is within %.3fs of PostgreSQL's again", offset)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every ``interval_s`` until ``stop`` is set; a failed sample (PostgreSQL
        away) is retried after ``retry_delay_s``, `now` meanwhile counting on from the
        last one."""
        while not stop.is_set():
            delay = self.interval_s
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("clock sample failed (%r); retrying", exc)
                delay = self.retry_delay_s
            await sleep_or_stop(stop, delay)
