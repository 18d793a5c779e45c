"""The timer service: due timers in PostgreSQL -> `timer` triggers on the bus.

Timers are rows written in the same transaction as the events that asked for
them (Wait, retry back-off, task timeout, execution timeout), so they survive
any restart; a timer that came due while every engine was down fires late,
never not at all. The append that consumes a timer deletes its row. Until
then the service re-fires it only after ``refire_after_s`` (a trigger lost with
a flushed Redis is sent again); decide ignores a timer that is no longer
pending, so a second firing changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from engine.bus import Bus
from engine.runtime import encode_timer
from engine.store import EventStore

log = logging.getLogger("steplog.timers")


class TimerService:
    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        *,
        poll_interval_s: float = 0.2,
        refire_after_s: float = 30.0,
        batch_size: int = 500,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store = store
        self.bus = bus
        self.poll_interval_s = poll_interval_s
        self.refire_after_s = refire_after_s
        self.batch_size = batch_size
        self.clock = clock
        # timer id -> when this process last fired it (monotonic seconds).
        self._fired: dict[str, float] = {}
        self.fired = 0

    async def tick(self) -> int:
        """Fire every due timer not fired recently; returns how many were fired."""
        loop = asyncio.get_running_loop()
        now_mono = loop.time()
        due = await self.store.due_timers(self.clock(), self.batch_size)
        due_ids = {t.timer_id for t in due}
        # Forget timers that are gone (consumed): the map stays as small as the table.
        self._fired = {k: v for k, v in self._fired.items() if k in due_ids}
        fresh = [
            t for t in due if now_mono - self._fired.get(t.timer_id, -1e18) >= self.refire_after_s
        ]
        for timer in fresh:
            await self.bus.add_trigger(timer.execution_id, "timer", encode_timer(timer.timer_id))
            self._fired[timer.timer_id] = now_mono
        self.fired += len(fresh)
        return len(fresh)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer tick failed; retrying")
            try:
                await asyncio.wait_for(stop.wait(), self.poll_interval_s)
            except TimeoutError:
                pass
