"""The timer service: due timers in PostgreSQL -> `TimerFired` triggers on the bus.

Timers are rows written in the same transaction as the events that asked for
them (Wait, retry back-off, task timeout, heartbeat, execution timeout), so
they survive any restart; a timer that came due while every engine was down
fires late, never not at all. The append that consumes a timer deletes its row.

Each timer fires at most once per due time, however many processes run a
timer service: a tick claims due timers with a lease (FOR UPDATE SKIP LOCKED,
`EventStore.claim_due_timers`), adds their triggers, then records the due time
they fired for. A service that dies between claim and record leaves the lease
to expire, and another fires the timer (a duplicate trigger is harmless: decide
ignores a timer that is no longer pending). A timer whose due time moves (a
heartbeat) is due again at its new time. When Redis loses its data, recovery
re-arms fired timers (engine.loops.recovery), because their triggers may be gone.
Recording is retried while PostgreSQL does not answer (read-only after a failover, a
dropped connection) for as long as the claim's lease lasts, so an outage shorter than
the lease fires nothing twice.

"Due" is by PostgreSQL's clock, read by the claim itself (DESIGN invariant 8): a
service whose own clock runs ahead fires nothing early, one whose clock runs behind
nothing late. ``clock`` replaces it only in tests that move time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from uuid import UUID

from opentelemetry.trace import Tracer

from engine.adapters.bus import Bus, PartlyPublished
from engine.adapters.store import DueTimer, EventStore
from engine.errors import Unavailable
from engine.loops import metrics
from engine.loops.tracing import ExecutionTraces, end_spans, timer_spans
from engine.messages import TimerFired, TriggerMessage
from engine.stopping import sleep_or_stop
from engine.tracecontext import traceparent_of

log = logging.getLogger("steplog.timers")

# The pauses between two tries to publish the rest of a publish Redis took in part, or
# to record fired timers (doubling).
RECORD_BACKOFF_FIRST_S = 0.05
RECORD_BACKOFF_MAX_S = 1.0


class TimerService:
    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        *,
        poll_interval_s: float = 0.2,
        lease_s: float = 10.0,
        batch_size: int = 500,
        retry_delay_s: float = 1.0,
        clock: Callable[[], dt.datetime] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        # A span per fired timer (engine.loops.tracing); None: tracing off.
        self.tracer = tracer
        self.traces = ExecutionTraces(store)
        self.bus = bus
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
        self.batch_size = batch_size
        self.retry_delay_s = retry_delay_s
        # None: PostgreSQL's clock decides what is due (production); a clock given
        # stands in for it (tests).
        self.clock = clock
        self.fired = 0

    async def tick(self) -> int:
        """Claim due timers, add one trigger each (one pipeline), record them as fired;
        returns how many were fired."""
        lease_ends = asyncio.get_running_loop().time() + self.lease_s
        due = await self.store.claim_due_timers(
            None if self.clock is None else self.clock(), self.batch_size, self.lease_s
        )
        if not due:
            return 0
        now = due[0].claimed_at  # when they were claimed, by the clock that found them due
        assert now is not None
        if self.tracer is None:
            await self._publish(
                [(t.execution_id, TimerFired(timer_id=t.timer_id)) for t in due], lease_ends
            )
        else:
            # Each trigger carries its timer's span: the decision it causes is its child.
            spans = await timer_spans(self.tracer, self.traces, due, now)
            try:
                await self._publish(
                    [
                        (
                            t.execution_id,
                            TimerFired(timer_id=t.timer_id, traceparent=traceparent_of(s)),
                        )
                        for t, s in zip(due, spans, strict=True)
                    ],
                    lease_ends,
                )
            except BaseException as exc:
                end_spans(spans, exc)
                raise
            end_spans(spans)
        await self._record_fired(due, lease_ends)
        metrics.observe_fired([t.due_at for t in due], now)
        self.fired += len(due)
        return len(due)

    async def _publish(
        self, triggers: Sequence[tuple[UUID, TriggerMessage]], lease_ends: float
    ) -> None:
        """Publish the triggers of claimed timers, retried with a back-off while Redis
        cannot serve (`Unavailable`) until the claim's lease ends; then the error is
        raised, and another service fires the timers again after the lease. A publish
        Redis took in part (`PartlyPublished`: at the edge of its memory) is retried
        for the rest only; what was published is published again only when a reply
        was lost (a dropped connection) or the lease ran out (a duplicate trigger,
        which decide ignores)."""
        loop = asyncio.get_running_loop()
        delay = RECORD_BACKOFF_FIRST_S
        while True:
            try:
                await self.bus.publish(triggers=triggers)
                return
            except Unavailable as exc:
                if isinstance(exc, PartlyPublished):
                    triggers = exc.triggers
                if loop.time() + delay >= lease_ends:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_BACKOFF_MAX_S)

    async def _record_fired(self, due: list[DueTimer], lease_ends: float) -> None:
        """`mark_timers_fired`, retried with a back-off while it fails (PostgreSQL away,
        read-only, a connection dropped) until the claim's lease ends by this process's
        monotonic clock; then the error is raised, and another service may fire the
        timers again (a duplicate trigger, which decide ignores)."""
        loop = asyncio.get_running_loop()
        delay = RECORD_BACKOFF_FIRST_S
        while True:
            try:
                await self.store.mark_timers_fired(due)
                return
            except Unavailable:  # the store translates every outage (a dropped session too)
                if loop.time() + delay >= lease_ends:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_BACKOFF_MAX_S)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a full batch ticks again at once. Errors of
        PostgreSQL or Redis are logged and retried after ``retry_delay_s``."""
        while not stop.is_set():
            delay = self.poll_interval_s
            try:
                if await self.tick() >= self.batch_size:
                    delay = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("timer tick failed (%r); retrying", exc)
                delay = self.retry_delay_s
            if delay:
                await sleep_or_stop(stop, delay)
