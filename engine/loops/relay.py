"""The relay: the one bridge from PostgreSQL to Redis (DESIGN "Postgres to Redis").

One leader at a time (a session advisory lock on a dedicated connection) tails
`EventStore.read_all` from its checkpoint and, per batch, in one pipeline:
publishes every event to its partition's events stream, with the messages they call
for (engine.messages.follow_ups): a ``Begin`` trigger for each ``ExecutionStarted``, a
``TaskMessage`` on its queue's task stream for each ``TaskScheduled``.
Only after the pipeline succeeded does it advance the checkpoint, so a crash
between the two republishes the batch: delivery is at least once, consumers dedupe
on (execution_id, seq). It wakes on ``LISTEN steplog_events`` and polls as a fallback
(a notification can be missed, e.g. while reconnecting).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from opentelemetry.trace import Tracer

from engine.adapters.bus import Bus
from engine.adapters.store import NOTIFY_CHANNEL, EventStore, GlobalPosition, StoredEvent
from engine.loops import metrics
from engine.loops.tracing import ExecutionTraces, end_spans, publish_spans, traceparent_of
from engine.messages import follow_ups

log = logging.getLogger(__name__)

# Advisory lock class of relay leadership (the ASCII of "stpR"); the key is hashtext(name).
RELAY_LOCK_CLASS = 0x73747052
HELD_BACK_FIRST_S = 0.01

TRY_LEAD = "SELECT pg_try_advisory_lock($1, hashtext($2))"
RESIGN = "SELECT pg_advisory_unlock($1, hashtext($2))"
LOAD_CHECKPOINT = "SELECT tx_id, position FROM relay_checkpoint WHERE name = $1"
# Never moves backwards: a deposed leader finishing a late batch cannot undo progress.
SAVE_CHECKPOINT = """
INSERT INTO relay_checkpoint (name, tx_id, position) VALUES ($1, $2::text::xid8, $3)
ON CONFLICT (name) DO UPDATE
SET tx_id = EXCLUDED.tx_id, position = EXCLUDED.position, updated_at = now()
WHERE (relay_checkpoint.tx_id, relay_checkpoint.position)
    < (EXCLUDED.tx_id, EXCLUDED.position)"""


async def _wait_any(events: Sequence[asyncio.Event], seconds: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Relay:
    """Publishes committed events from ``store`` to ``bus``; see the module docstring.

    ``pool`` lends the relay one connection for as long as it leads (the advisory lock
    and LISTEN live on it). Relays with the same ``name`` share one leadership and one
    checkpoint.
    """

    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        pool: asyncpg.Pool,
        *,
        name: str = "relay",
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        retry_delay_s: float = 1.0,
        tracer: Tracer | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        # The clock the lag metric reads (the one events are stamped by: engine.adapters.clock).
        self._clock = clock
        # A publish span per execution and batch (engine.loops.tracing); None: off.
        self._tracer = tracer
        self._traces = ExecutionTraces(store)
        self._bus = bus
        self._pool = pool
        self.name = name
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._retry_delay_s = retry_delay_s
        self.is_leader = False
        self.position = GlobalPosition()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set. Errors of PostgreSQL or Redis are logged and
        retried after a delay (leadership is given up and contested again)."""
        while not stop.is_set():
            try:
                async with self._pool.acquire() as conn:
                    if await conn.fetchval(TRY_LEAD, RELAY_LOCK_CLASS, self.name):
                        try:
                            self.is_leader = True
                            log.info("relay %s: leading", self.name)
                            await self._lead(conn, stop)
                        finally:
                            self.is_leader = False
                            if not conn.is_closed():
                                await conn.fetchval(RESIGN, RELAY_LOCK_CLASS, self.name)
                        continue
                await _wait_any([stop], self._poll_interval_s)
            except Exception:
                log.exception("relay %s failed; retrying in %.1fs", self.name, self._retry_delay_s)
                await _wait_any([stop], self._retry_delay_s)

    async def _lead(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        wake = asyncio.Event()

        def on_notify(*_: Any) -> None:
            wake.set()

        await conn.add_listener(NOTIFY_CHANNEL, on_notify)
        try:
            row = await conn.fetchrow(LOAD_CHECKPOINT, self.name)
            self.position = (
                GlobalPosition() if row is None else GlobalPosition(row["tx_id"], row["position"])
            )
            # After a notification, a commit can stay hidden from read_all for a moment
            # behind an older transaction still in flight (e.g. a projector's batch); its
            # notification is already spent, so re-read soon, backing off from
            # HELD_BACK_FIRST_S up to the poll interval, instead of a full poll interval.
            recheck = 0.0
            while not stop.is_set():
                # Cleared before reading: a notification arriving during the read wakes
                # the next wait instead of being lost.
                wake.clear()
                events = await self._store.read_all(self.position, self._batch_size)
                if events:
                    await self._publish(events)
                    await self._save_checkpoint(conn, events[-1].global_position)
                    self.position = events[-1].global_position
                    if len(events) == self._batch_size:
                        continue  # more may be waiting
                timeout = recheck or self._poll_interval_s
                await _wait_any([stop, wake], timeout)
                if wake.is_set():
                    recheck = HELD_BACK_FIRST_S
                elif recheck:
                    recheck = recheck * 2 if recheck * 2 < self._poll_interval_s else 0.0
                if conn.is_closed():
                    raise ConnectionError("relay leader connection lost")
        finally:
            if not conn.is_closed():
                await conn.remove_listener(NOTIFY_CHANNEL, on_notify)

    async def _publish(self, events: Sequence[StoredEvent]) -> None:
        if self._tracer is None:
            triggers, tasks = follow_ups(events)
            await self._bus.publish(events, triggers, tasks)
            metrics.observe_published(events, self._clock())
            return
        # The messages carry their execution's publish span: the engine's decision and
        # the worker's attempt become its children.
        spans = await publish_spans(self._tracer, self._traces, events)
        try:
            parents = {execution_id: traceparent_of(span) for execution_id, span in spans.items()}
            triggers, tasks = follow_ups(events, parents)
            await self._bus.publish(events, triggers, tasks)
        except BaseException as exc:
            end_spans(spans.values(), exc)
            raise
        end_spans(spans.values())
        metrics.observe_published(events, self._clock())

    async def _save_checkpoint(self, conn: asyncpg.Connection, position: GlobalPosition) -> None:
        await conn.execute(SAVE_CHECKPOINT, self.name, str(position.tx_id), position.position)
