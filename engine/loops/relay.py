"""The relay: the one bridge from PostgreSQL to Redis (DESIGN "Postgres to Redis").

One leader at a time tails `EventStore.read_all` from its checkpoint and, per batch, in
one pipeline: publishes every event to its partition's events stream, with the messages
they call for (engine.messages.follow_ups): a ``Begin`` trigger for each
``ExecutionStarted``, a ``TaskMessage`` on its queue's task stream for each
``TaskScheduled``. Only after the pipeline succeeded does it advance the checkpoint, so a
crash between the two republishes the batch: delivery is at least once, consumers dedupe
on (execution_id, seq). It wakes on ``LISTEN steplog_events`` (engine.adapters.notifier)
and polls as a fallback (a notification can be missed, e.g. while reconnecting).

Leadership is a lease in PostgreSQL (engine.adapters.relay_lease, migration 0012), not
a session lock: a dropped connection does not hand it over, and neither does a
checkpoint write PostgreSQL refuses for a while (read-only after a failover). The leader
renews its lease on a task of its own, every ``lease_s / 3``, whatever the publishing
loop waits for; a standby takes over only once the lease has expired (a crashed or cut
off leader) or was given up (a clean stop). While it leads, the relay's in-memory
position is the truth: a batch it published and could not record is recorded later,
retried with a back-off, never published again by this relay. It publishes only while
its lease, as its own monotonic clock measures it from the last renewal, runs; so an
event reaches the stream at most twice through one outage: once by the leader before
it, once more by the next leader if the outage outlasted the lease (docs/internals.md).
A batch Redis took in part (each stream takes its part whole or not at all:
`Bus.publish`) is kept and only its refused part is published again; only a reply
lost with its connection can make a single Redis receive a part twice (a cluster
takes each try of a batch once: the batch's publish token).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from uuid import UUID

import asyncpg
from opentelemetry.trace import Tracer

from engine.adapters.bus import Bus, PartlyPublished
from engine.adapters.notifier import EventNotifier
from engine.adapters.relay_lease import RelayLease
from engine.adapters.store import EventStore, GlobalPosition, StoredEvent
from engine.core.events import CommittedEvent
from engine.errors import Unavailable
from engine.loops import metrics
from engine.loops.tracing import ExecutionTraces, message_parents
from engine.messages import TaskMessage, TriggerMessage, follow_ups
from engine.stopping import cancel_and_wait

log = logging.getLogger(__name__)

HELD_BACK_FIRST_S = 0.01
# The pauses between two tries after a failure (doubling up to retry_delay_s).
BACKOFF_FIRST_S = 0.05


async def _wait_any(events: Sequence[asyncio.Event], seconds: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class _Batch:
    """Events read in one batch, and what of them and their messages is not published
    yet (``rest``: the arguments of `Bus.publish`)."""

    def __init__(
        self,
        events: Sequence[StoredEvent],
        rest: tuple[
            Sequence[CommittedEvent], Sequence[tuple[UUID, TriggerMessage]], Sequence[TaskMessage]
        ],
    ) -> None:
        self.events = events
        self.rest = rest
        # The same for every try of this batch: a stream that has it adds nothing again
        # (on a cluster, `Bus.publish`).
        self.token = secrets.token_hex(8)


class Deposed(Exception):
    """Another relay holds the lease: this one stops leading."""


class _Lease:
    """How long this relay may still act as the leader, by its own monotonic clock: the
    lease's length from the moment the last successful renewal was sent."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self.deadline = 0.0
        self.renewed = asyncio.Event()  # set at each renewal
        self.deposed = asyncio.Event()

    def held(self) -> bool:
        return asyncio.get_running_loop().time() < self.deadline

    def extend(self, sent_at: float) -> None:
        self.deadline = max(self.deadline, sent_at + self.lease_s)
        self.renewed.set()


class Relay:
    """Publishes committed events from ``store`` to ``bus``; see the module docstring.

    Relays with the same ``name`` share one leadership and one checkpoint; ``lease_s``
    is how long a leader that stopped renewing keeps the lead (the longest a crashed
    leader delays publishing, and the longest outage one leader rides out alone).
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
        lease_s: float = 5.0,
        tracer: Tracer | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        # The clock the lag metric reads (the one events are stamped by: engine.adapters.clock).
        self._clock = clock
        # Tracing on: messages carry their execution's trace context; None: off.
        self._tracer = tracer
        self._traces = ExecutionTraces(store)
        self._bus = bus
        self._notifier = EventNotifier(pool)
        self.name = name
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._lease_row = RelayLease(pool, name, self.holder, lease_s)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._retry_delay_s = retry_delay_s
        self.lease_s = lease_s
        self._lease: _Lease | None = None  # while leading
        self.position = GlobalPosition()  # published up to (while leading: the truth)
        self._batch: _Batch | None = None  # a batch not all published yet

    @property
    def is_leader(self) -> bool:
        """Leading, with a lease that runs (only then does it publish)."""
        lease = self._lease
        return lease is not None and lease.held() and not lease.deposed.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set (then give up the lease). Errors of PostgreSQL or
        Redis are logged and retried with a back-off; leadership is kept through them
        for as long as the lease lasts."""
        loop = asyncio.get_running_loop()
        failing = False
        while not stop.is_set():
            sent_at = loop.time()
            try:
                saved = await self._lease_row.take()
            except Exception as exc:
                _log_failure(f"relay {self.name}: cannot contest the lead", exc, not failing)
                failing = True
                await _wait_any([stop], self._retry_delay_s)
                continue
            failing = False
            if saved is None:
                await _wait_any([stop], self._poll_interval_s)
                continue
            # What this relay published before (it led earlier) is published: keep it.
            self.position = max(self.position, saved)
            lease = _Lease(self.lease_s)
            lease.extend(sent_at)
            self._lease = lease
            log.info("relay %s: leading (%s)", self.name, self.holder)
            keeper = asyncio.create_task(self._keep_lease(lease, stop))
            try:
                await self._lead(lease, stop)
            except Deposed:
                log.warning("relay %s: another relay took the lead", self.name)
            finally:
                self._lease = None
                await cancel_and_wait([keeper])
                if stop.is_set():
                    await self._give_up()

    async def _give_up(self) -> None:
        try:
            await asyncio.wait_for(self._lease_row.give_up(), self._retry_delay_s * 2)
        except Exception as exc:  # the lease then expires by itself
            log.warning("relay %s: cannot give up the lead (%r)", self.name, exc)

    async def _keep_lease(self, lease: _Lease, stop: asyncio.Event) -> None:
        """Renew the lease every ``lease_s / 3``, on its own schedule: a publish or a read
        that hangs does not let it lapse. Sets ``lease.deposed`` when another relay
        holds the lead."""
        loop = asyncio.get_running_loop()
        every = self.lease_s / 3
        failing = False
        while not stop.is_set():
            wait = every - (loop.time() - (lease.deadline - self.lease_s))
            await _wait_any([stop], max(wait, 0.0) if not failing else min(every, 0.5))
            if stop.is_set():
                return
            sent_at = loop.time()
            try:
                renewed = await self._lease_row.renew()
            except Exception as exc:
                _log_failure(f"relay {self.name}: cannot renew the lease", exc, not failing)
                failing = True
                continue
            failing = False
            if not renewed:
                lease.deposed.set()
                return
            lease.extend(sent_at)

    async def _lead(self, lease: _Lease, stop: asyncio.Event) -> None:
        try:
            async with self._notifier.subscribed():
                await self._follow(lease, stop)
        finally:
            self._batch = None  # what it held not all published: the next leader publishes it

    async def _follow(self, lease: _Lease, stop: asyncio.Event) -> None:
        # After a notification, a commit can stay hidden from read_all for a moment
        # behind an older transaction still in flight (e.g. a projector's batch); its
        # notification is already spent, so re-read soon, backing off from
        # HELD_BACK_FIRST_S up to the poll interval, instead of a full poll interval.
        recheck = 0.0
        backoff = 0.0
        unsaved: GlobalPosition | None = None  # published, not recorded yet
        pending: Sequence[StoredEvent] = ()  # read, not all of it published yet
        more = False  # the last batch was full
        changed = self._notifier.changed()
        while not stop.is_set():
            if lease.deposed.is_set():
                raise Deposed
            if not lease.held():
                # Cut off from PostgreSQL for a whole lease: another relay may lead
                # now. Publish nothing until the lease is renewed (or lost).
                lease.renewed.clear()
                await _wait_any([stop, lease.renewed, lease.deposed], self._retry_delay_s)
                continue
            try:
                if unsaved is not None:
                    # Retried here until recorded (or the lead is lost); never
                    # published again in between.
                    if not await self._lease_row.save(unsaved):
                        raise Deposed
                    unsaved = None
                    if more:
                        continue
                else:
                    if not pending:
                        # Taken before reading: a notification arriving during the read
                        # (or the publish and the save) wakes the next wait at once.
                        changed = self._notifier.changed()
                        pending = await self._store.read_all(self.position, self._batch_size)
                        if pending and not lease.held():
                            continue  # the read outlasted the lease: see above
                    if pending:
                        # A publish Redis took in part is retried for the rest only.
                        await self._publish(pending)
                        self.position = unsaved = pending[-1].global_position
                        more = len(pending) == self._batch_size
                        pending = ()
                        backoff = 0.0
                        continue  # recorded at the top of the loop
            except (Deposed, asyncio.CancelledError):
                raise
            except Exception as exc:
                # Kept: the lead, the position, the batch not all published and the
                # unsaved checkpoint. Nothing published is published again by this
                # relay (but for a reply Redis sent and the connection lost).
                _log_failure(f"relay {self.name} failed", exc, not backoff)
                backoff = min(max(backoff * 2, BACKOFF_FIRST_S), self._retry_delay_s)
                await _wait_any([stop, lease.deposed], backoff)
                continue
            backoff = 0.0
            timeout = recheck or self._poll_interval_s
            await _wait_any([stop, changed, lease.deposed], timeout)
            if changed.is_set():
                recheck = HELD_BACK_FIRST_S
            elif recheck:
                recheck = recheck * 2 if recheck * 2 < self._poll_interval_s else 0.0
        if unsaved is not None:  # stopping: one try to record what was published
            try:
                await self._lease_row.save(unsaved)
            except Exception as exc:
                log.warning("relay %s: checkpoint not saved at stop (%r)", self.name, exc)

    async def _publish(self, events: Sequence[StoredEvent]) -> None:
        """Publish the batch ``events`` with the messages they call for; called again
        with the same batch after a failure, it publishes only what Redis has not
        taken yet (each stream takes its part of a publish whole or not at all)."""
        batch = self._batch
        if batch is None or batch.events is not events:
            batch = self._batch = await self._prepare(events)
        try:
            await self._bus.publish(*batch.rest, token=batch.token)
        except PartlyPublished as exc:
            batch.rest = (exc.events, exc.triggers, exc.tasks)
            raise
        self._batch = None
        metrics.observe_published(events, self._clock())

    async def _prepare(self, events: Sequence[StoredEvent]) -> _Batch:
        # With tracing on, the messages carry their execution's recorded trace context:
        # the engine's decision and the worker's attempt join the execution's trace.
        parents = None if self._tracer is None else await message_parents(self._traces, events)
        triggers, tasks = follow_ups(events, parents)
        return _Batch(events, (events, triggers, tasks))


def _log_failure(what: str, exc: Exception, first: bool) -> None:
    """An outage (`Unavailable`) is expected: a warning for its first failure, then debug,
    no traceback. Anything else is logged with its traceback."""
    if isinstance(exc, Unavailable):
        log.log(logging.WARNING if first else logging.DEBUG, "%s: %r; retrying", what, exc)
    else:
        log.error("%s; retrying", what, exc_info=exc)
