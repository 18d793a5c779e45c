"""The webhooks role: queues matching events from the log and sends them, signed.

Contracts
- Queueing is a projection (engine/adapters/webhooks_store.py `queue`): every enabled
  subscription's checkpoint moves with the deliveries of the events it passed, in one
  transaction, so nothing is lost across crashes and nothing depends on Redis. One read
  of the log serves every subscription (from the lowest checkpoint).
- Sending: deliveries are claimed with a lease (at most `concurrency` in flight per
  process), POSTed through the outbound guard with the Standard Webhooks headers (signed
  by the previous secret too while a rotation's overlap lasts), and their outcome
  recorded (shielded from a stop). A 2xx is delivered; anything else is
  retried with back-off until the horizon, then dead. Only the head of an execution's
  queue is claimable, so a subscription receives an execution's events in seq order and a
  failing delivery holds back only the later events of its own execution.
- Any number of processes run it: the checkpoint lock and the claim (SKIP LOCKED, leases)
  share the work. A process that dies mid-send leaves its leases to run out; the
  deliveries are then sent again with the same webhook-id (at least once).
- It wakes on LISTEN (the append doorbell), when one of its sends finishes, and every
  `poll_s` (other processes' progress, back-offs coming due).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator
from uuid import UUID

from prometheus_client import Counter, Histogram

from engine.adapters.notifier import EventNotifier
from engine.adapters.outbound import Outbound, OutboundError
from engine.adapters.webhooks_store import Claimed, NewDelivery, Outcome, WebhookStore
from engine.errors import Unavailable
from engine.stopping import log_failure, shielded, sleep_or_stop
from engine.webhooks import DeliveryPolicy, delivery_id, matches, payload, signatures

log = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "steplog_webhook_attempts",
    "Webhook delivery attempts, by outcome: delivered (2xx), retry (failed, to be tried "
    "again), dead (failed past the retry horizon).",
    ("outcome",),
)
for _outcome in ("delivered", "retry", "dead"):
    ATTEMPTS.labels(_outcome)
QUEUED = Counter("steplog_webhook_queued", "Webhook deliveries queued from the event log.")
ATTEMPT_SECONDS = Histogram(
    "steplog_webhook_attempt_seconds",
    "Time from sending a webhook to its response (or failure).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class WebhookSender:
    """Runs the webhooks role until its stop event is set (see the module doc)."""

    def __init__(
        self,
        store: WebhookStore,
        outbound: Outbound,
        *,
        notifier: EventNotifier | None = None,
        policy: DeliveryPolicy | None = None,
        lease_s: float | None = None,
        retry_delay: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.outbound = outbound
        self.notifier = notifier
        self.policy = policy or DeliveryPolicy()
        # Longer than any one send may take, so a live sender keeps what it claimed.
        self.lease_s = lease_s or 2 * outbound.policy.total_timeout_s + 5
        self.retry_delay = retry_delay
        self.rng = rng or random.Random()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()
        self._stopping = False
        self._subscribed = True  # whether a subscription was enabled at the last look
        self.queued = 0  # observability, tests
        self.sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        await self.outbound.start()
        try:
            async with self._listening():
                await self._loop(stop)
        finally:
            self._stopping = True
            if self._in_flight:
                # A stop lets running sends finish (each within the outbound timeout).
                await asyncio.wait(self._in_flight)
            await self.outbound.close()

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[None]:
        if self.notifier is None:
            yield
            return
        async with self.notifier.subscribed():
            yield

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            changed = self.notifier.changed() if self.notifier is not None else None
            self._progress.clear()
            try:
                queued = await self.queue_new()
                # No subscription enabled: nothing to claim either (a claim joins the
                # enabled ones), and appends are not waited on, so a busy engine costs
                # this role two queries per append only where webhooks are in use. One
                # made meanwhile is found at the next poll, and queued from its own
                # checkpoint: it misses nothing.
                claimed = await self._claim_and_send() if self._subscribed else 0
            except Unavailable as exc:
                log.warning("webhooks: %r; retrying", exc)
                await sleep_or_stop(stop, self.retry_delay)
                continue
            if queued or claimed:
                continue
            waits = [stop.wait(), self._progress.wait()]
            if changed is not None and self._subscribed:
                waits.append(changed.wait())
            tasks = [asyncio.ensure_future(w) for w in waits]
            try:
                await asyncio.wait(tasks, timeout=self.policy.poll_s, return_when="FIRST_COMPLETED")
            finally:
                for task in tasks:
                    task.cancel()

    # -- queueing -------------------------------------------------------------------

    async def queue_new(self) -> int:
        """Queue the deliveries of every event committed past the checkpoints; returns
        how many were queued (0 when caught up)."""
        total = 0
        while True:
            subs = await self.store.enabled()
            self._subscribed = bool(subs)
            if not subs:
                return total
            start = min((s.tx_id, s.position) for s in subs)
            events = await self.store.read_events(start, self.policy.batch_size)
            if not events:
                return total
            upto = (events[-1].tx_id, events[-1].position)
            read_from = {
                s.webhook_id: (s.tx_id, s.position) for s in subs if (s.tx_id, s.position) < upto
            }
            deliveries: dict[UUID, list[NewDelivery]] = {}
            for sub in subs:
                if sub.webhook_id not in read_from:
                    continue
                after = read_from[sub.webhook_id]
                deliveries[sub.webhook_id] = [
                    NewDelivery(
                        delivery_id=delivery_id(sub.webhook_id, e.execution_id, e.seq),
                        execution_id=e.execution_id,
                        seq=e.seq,
                        event_type=e.type,
                        payload=payload(e).decode(),
                    )
                    for e in events
                    if (e.tx_id, e.position) > after and matches(sub, e)
                ]
            count = await self.store.queue(read_from, deliveries, upto)
            QUEUED.inc(count)
            self.queued += count
            total += count
            if len(events) < self.policy.batch_size:
                return total

    # -- sending --------------------------------------------------------------------

    async def _claim_and_send(self) -> int:
        free = self.policy.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        claimed = await self.store.claim(free, self.lease_s)
        for c in claimed:
            task = asyncio.create_task(self._deliver(c))
            self._in_flight.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._progress.set()
        log_failure(task, "webhook delivery")

    async def _deliver(self, c: Claimed | None) -> None:
        """Send ``c``; once delivered, go on with its execution's next delivery for the
        same subscription, if one is due (no wait for the main loop: per-execution order
        makes each delivery wait for the one before)."""
        while c is not None:
            outcome = await self.attempt(c)
            lease = None if self._stopping else self.lease_s
            sent = c
            try:
                c = await shielded(
                    self.store.record(sent, outcome, self.policy.pause_after_s, next_lease_s=lease),
                    "webhook record",
                )
            except Unavailable as exc:
                # The lease runs out and the delivery is sent again: at least once.
                log.warning("webhooks: could not record %s: %r", sent.delivery_id, exc)
                return

    async def attempt(self, c: Claimed) -> Outcome:
        """POST one claimed delivery; what became of it (nothing recorded yet)."""
        body = c.payload.encode()
        timestamp = int(time.time())
        # During a rotation's overlap the previous secret signs too (the new one first).
        keys = [c.secret] if c.previous_secret is None else [c.secret, c.previous_secret]
        headers = {
            "Content-Type": "application/json",
            "webhook-id": c.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures(keys, c.delivery_id, timestamp, body),
        }
        at = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        status: int | None = None
        excerpt = ""
        error: str | None = None
        try:
            response = await self.outbound.request(
                "POST", c.url, headers=headers, body=body, truncate=True
            )
            status = response.status
            cap = self.policy.excerpt_bytes
            # PostgreSQL text holds no NUL: a receiver's binary answer is shown without.
            excerpt = (
                response.body[:cap].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
            )
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except OutboundError as exc:
            error = f"{exc.code}: {exc.message}".replace("\x00", "\ufffd")
        latency = time.perf_counter() - started
        ATTEMPT_SECONDS.observe(latency)
        self.sent += 1

        def outcome(state: str, next_attempt_at: dt.datetime | None = None) -> Outcome:
            return Outcome(
                state=state,
                next_attempt_at=next_attempt_at,
                at=at,
                status_code=status,
                latency_ms=latency * 1000,
                error=error,
                response_excerpt=excerpt,
            )

        if error is None:
            ATTEMPTS.labels("delivered").inc()
            return outcome("delivered")
        now = dt.datetime.now(dt.UTC)
        horizon = c.first_attempt_at + dt.timedelta(seconds=self.policy.retry_horizon_s)
        retry_at = now + dt.timedelta(seconds=self.policy.backoff_s(c.attempt, self.rng.random()))
        if retry_at > horizon:
            ATTEMPTS.labels("dead").inc()
            log.warning("webhook %s to %s dead-lettered: %s", c.delivery_id, c.url, error)
            return outcome("dead")
        ATTEMPTS.labels("retry").inc()
        return outcome("pending", retry_at)
