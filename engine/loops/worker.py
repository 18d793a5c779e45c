"""Task workers and the handler registry.

A handler is a Python callable registered under a resource name (the Task
state's ``Resource``). It receives the task input and a ``TaskContext`` whose
``idempotency_key`` names the attempt (execution id, state, attempt): a
handler with side effects uses it to make them exactly once, because tasks
run at least once. Raise ``TaskFailure(error, cause)`` to fail the task with
an ASL error a Retry or Catch can match; any other exception fails it with
the exception's class name as the error.

A ``Worker`` reads its queue's stream through the consumer group "workers",
runs each task, adds the result to the execution's trigger stream and only
then acknowledges the task (a crash in between runs the task again). A
finished result is kept while Redis does not answer: adding it (and then the
acknowledgement) is retried with a back-off until the attempt's own deadline
(its TimeoutSeconds, else ``visibility_timeout_s * max_deliveries``), so a Redis
restart does not make a finished task run again. Tasks
left unacknowledged by a dead worker are claimed after a visibility timeout
(XAUTOCLAIM); a worker keeps its running tasks from being claimed by touching
them, on a schedule of its own that no PostgreSQL query and no read waits for (a
database stall longer than the visibility timeout does not hand a running task to
another worker). A claim is a lease: when Redis has not confirmed it for most of a
visibility timeout (Redis paused or away longer than that), or another worker has
claimed the entry meanwhile, the worker cancels that handler rather than run it
beside the other worker's, and leaves the entry to be claimed; an entry it gave up
unconfirmed it claims again itself as soon as Redis answers, if no other worker has
(a new delivery), and runs it again. A task delivered more than ``max_deliveries`` times is dead-lettered
and reported as failed with ``Steplog.TaskDeliveryExceeded`` (a Retry or Catch
can handle it, States.TaskFailed and States.ALL match it). Given ``ended``, a
worker skips tasks of executions that have ended and cancels running handlers
of executions that end (a stop, a timeout): their results would be ignored.
A Task whose Resource ends in ``.waitForTaskToken`` runs its base resource's handler
(``TaskContext.task_token`` carries the token to hand on); only a failure is reported,
the result comes with the callback (engine/tasks.py, docs/tasks.md).
Installed packages can contribute handlers through the entry point group
``steplog.handlers`` (each entry point is a ``HandlerRegistry`` or a callable
taking one and registering into it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, assert_never
from uuid import UUID

import msgspec
from opentelemetry.trace import (
    INVALID_SPAN,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)
from opentelemetry.util.types import AttributeValue

from engine.adapters.bus import Bus, Malformed, TaskDelivery
from engine.core.tasktokens import base_resource
from engine.core.timestamps import parse_iso
from engine.errors import BusError, MissingGroup, Unavailable
from engine.logcontext import execution_id_var
from engine.loops import metrics
from engine.loops.tracing import EXECUTION_ID, record_publish, start_child
from engine.messages import (
    DEFAULT_QUEUE,
    DELIVERY_EXCEEDED,
    WORKER_GROUP,
    Heartbeat,
    TaskMessage,
    TaskResult,
)
from engine.stopping import cancel_and_wait, log_failure, sleep_or_stop
from engine.tracecontext import current_span, set_own_attributes, traceparent_of

log = logging.getLogger("steplog.worker")


class TaskFailure(Exception):
    """Fail the task with an ASL error name and cause."""

    def __init__(self, error: str, cause: str | None = None) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


async def _no_heartbeat() -> None:
    return None


@dataclass(frozen=True, slots=True)
class TaskContext:
    execution_id: str
    state: str
    attempt: int
    task_id: str
    # Report that the task is alive (Task states with HeartbeatSeconds fail with
    # States.HeartbeatTimeout when no heartbeat arrives in time).
    heartbeat: Callable[[], Awaitable[None]] = _no_heartbeat
    # The worker's tracer (None: tracing off); the handler runs inside the attempt's span.
    tracer: Tracer | None = None
    # The attempt's task token when its Resource ends in .waitForTaskToken: the handler
    # hands it to whoever reports the outcome later (POST /v1/tasks/success|failure);
    # its own return value is not the task's result. Empty for an ordinary task.
    task_token: str = ""

    def span(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> AbstractContextManager[Span]:
        """A span of the handler's own, a child of this attempt's span in the execution's
        trace: ``with ctx.span("charge card", {"amount": 10}) as span: ...``. With tracing
        off it records nothing (the span it gives is a non-recording one)."""
        if self.tracer is None:
            return contextlib.nullcontext(INVALID_SPAN)
        return self.tracer.start_as_current_span(name, attributes=attributes)

    @property
    def idempotency_key(self) -> str:
        """Names one task attempt: ``<execution id>:<state>:<attempt>:<task id>``. Every
        delivery of the attempt (redelivery after a crash, recovery after a Redis flush)
        gets the same key; another attempt (a retry) gets another. The task id (the seq
        of the attempt's TaskScheduled event) tells apart the iterations of a Map and
        the passes of a loop through one state, which share state and attempt."""
        return f"{self.execution_id}:{self.state}:{self.attempt}:{self.task_id}"


Handler = Callable[[Any, TaskContext], Any | Awaitable[Any]]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, resource: str, handler: Handler) -> None:
        self._handlers[resource] = handler

    def handler(self, resource: str) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def wrap(fn: Handler) -> Handler:
            self.register(resource, fn)
            return fn

        return wrap

    def get(self, resource: str) -> Handler | None:
        return self._handlers.get(resource)

    def __contains__(self, resource: str) -> bool:
        return resource in self._handlers

    def load_entry_points(self) -> None:
        """Add the handlers of every ``steplog.handlers`` entry point."""
        for ep in entry_points(group="steplog.handlers"):
            self._add(ep.load())

    def load_modules(self, specs: Sequence[str]) -> None:
        """Add handlers named by ``module:attribute`` specs (``module`` alone means
        ``module:register``), as entry points would: the attribute is a HandlerRegistry
        or a callable taking this registry. Raises ImportError or AttributeError."""
        for spec in specs:
            module_name, _, attribute = spec.partition(":")
            target = getattr(importlib.import_module(module_name), attribute or "register")
            self._add(target)

    def _add(self, target: Any) -> None:
        if isinstance(target, HandlerRegistry):
            self._handlers.update(target._handlers)
        else:
            target(self)


# --- built-in handlers for examples and tests ----------------------------------------


def _echo(value: Any, ctx: TaskContext) -> Any:
    return value


def _fail(value: Any, ctx: TaskContext) -> Any:
    body = value if isinstance(value, dict) else {}
    raise TaskFailure(str(body.get("error", "States.TaskFailed")), body.get("cause"))


async def _sleep(value: Any, ctx: TaskContext) -> Any:
    """Sleep ``seconds``; with ``heartbeat_every`` it reports a heartbeat that often."""
    body = value if isinstance(value, dict) else {"seconds": value}
    seconds = body.get("seconds", 1)
    every = body.get("heartbeat_every")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise TaskFailure("States.TaskFailed", "test:sleep needs a non-negative number of seconds")
    if isinstance(every, int | float) and not isinstance(every, bool) and every > 0:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(seconds)
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(float(every), left))
            await ctx.heartbeat()
    else:
        await asyncio.sleep(float(seconds))
    return value


def default_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("test:echo", _echo)
    registry.register("test:fail", _fail)
    registry.register("test:sleep", _sleep)
    return registry


# The pauses between two tries to report a finished task's result (doubling).
REPORT_BACKOFF_MIN_S = 0.05
REPORT_BACKOFF_MAX_S = 2.0
# The longest a check for ended executions may take (PostgreSQL slow or a table locked):
# past it, tasks being started run anyway and running ones are checked again later.
ENDED_CHECK_TIMEOUT_S = 5.0
# The pause before touching running tasks again after Redis refused a touch.
TOUCH_RETRY_S = 0.5
# A claim is given up this part of the visibility timeout before it could lapse in Redis
# (measured from when the read or touch that confirmed it was sent), so that the
# handler is cancelled before another worker can claim the entry, even with the event
# loop a little late; the leases are checked every LEASE_CHECK_PART of it.
LEASE_MARGIN_PART = 0.25
RENEWALS_PER_TIMEOUT = 6
LEASE_CHECK_PART = 1 / 12

EndedCheck = Callable[[Sequence[UUID]], Awaitable[set[UUID]]]


@dataclass(slots=True)
class _Running:
    execution_id: UUID
    task: asyncio.Task[None]
    resource: str = ""
    attempt: int = 0
    started_at: float = 0.0  # monotonic (the monitor's `tasks` command)


class Worker:
    """Runs the tasks of one queue; see the module docstring for the delivery contract.

    ``ended`` (e.g. `EventStore.ended_executions`) tells which executions have ended;
    without it every task runs to its end.
    """

    def __init__(
        self,
        bus: Bus,
        registry: HandlerRegistry,
        *,
        queue: str = DEFAULT_QUEUE,
        consumer: str | None = None,
        concurrency: int = 16,
        block_ms: int = 1000,
        shutdown_grace_s: float = 10.0,
        visibility_timeout_s: float = 30.0,
        max_deliveries: int = 10,
        ended: EndedCheck | None = None,
        ended_check_interval_s: float = 1.0,
        tracer: Tracer | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.bus = bus
        # The clock of durable time (PostgreSQL's: engine.adapters.clock), against which
        # an attempt's recorded deadline (timeout_due) is measured.
        self.clock = clock
        # A span per task attempt around the handler (engine.loops.tracing); None: off.
        self.tracer = tracer
        self.registry = registry
        self.queue = queue
        self.stream = bus.tasks_stream(queue)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.block_ms = block_ms
        self.shutdown_grace_s = shutdown_grace_s
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self._ended = ended
        self.ended_check_interval_s = ended_check_interval_s
        self._running: dict[str, _Running] = {}  # by entry id
        # Entry id (starting or running) -> the loop time until which this worker surely
        # holds its claim: when the read or renewal that confirmed it was sent, plus the
        # visibility timeout (Redis counts the idle time from when it runs the command).
        self._held: dict[str, float] = {}
        self._reports: set[asyncio.Task[bool]] = set()  # results being reported
        # The entries of those results: a handler cancelled while its result was being
        # reported (its claim lapsed in a Redis outage) leaves its entry pending, and the
        # claim of stale entries must not run the attempt again while this worker still
        # holds its result (the report acknowledges the entry once Redis answers).
        self._reporting: set[str] = set()
        # Entries whose claim this worker gave up because Redis did not confirm it in
        # time (Redis paused or slow): still this worker's in Redis unless another
        # worker has claimed them since. Claimed again and run as soon as Redis answers
        # and their cancelled handler has ended (`_reclaim`); otherwise a renewal queued
        # in a paused Redis, run after the pause, would leave them idle for another
        # visibility timeout before any worker claimed them.
        self._lapsed: set[str] = set()
        self._abandon = asyncio.Event()  # set at shutdown: reports stop retrying
        self.started = 0  # handlers started (observability, readiness)
        self.completed = 0
        self.dead_lettered = 0
        self.skipped = 0  # tasks of ended executions, not run
        self.cancelled = 0  # handlers cancelled because their execution ended
        self.lapsed = 0  # handlers cancelled because their claim lapsed or was taken

    async def run(self, stop: asyncio.Event) -> None:
        """Run tasks until ``stop`` is set, then drain (see `_drain`). Errors of Redis or
        PostgreSQL are logged and retried; a flushed Redis gets the group re-created.

        The claims on running tasks are kept alive by a task of their own
        (`_keep_claims`), and ended executions are watched by another (`_watch_ended`):
        neither waits for the read loop or for PostgreSQL, and the read loop does not
        wait for them."""
        self._abandon.clear()
        keeper = asyncio.create_task(self._keep_claims())
        keeper.add_done_callback(lambda done: log_failure(done, "worker claim keeper"))
        watcher = asyncio.create_task(self._watch_ended())
        watcher.add_done_callback(lambda done: log_failure(done, "worker ended-check"))
        fence = asyncio.create_task(self._fence())
        fence.add_done_callback(lambda done: log_failure(done, "worker lease check"))
        try:
            await self._read_loop(stop)
            await self._drain()
        finally:
            await cancel_and_wait([keeper, watcher, fence])

    async def _keep_claims(self) -> None:
        """Every ``visibility_timeout_s / 6``, renew the claims on the tasks this worker
        runs or is about to start, so that no other worker claims them (until
        cancelled). Only Redis is called: a slow PostgreSQL or a blocked read loop does
        not let a claim lapse. A claim another worker has taken is given up."""
        loop = asyncio.get_running_loop()
        # Often enough that a renewal may take most of the lease's margin of safety (a
        # Redis busy after an outage) without its handler being cancelled by the fence.
        every = self.visibility_timeout_s / RENEWALS_PER_TIMEOUT
        failing = False
        while True:
            await asyncio.sleep(min(TOUCH_RETRY_S, every) if failing else every)
            ids, sent = list(self._held), loop.time()
            try:
                kept = await self.bus.renew(self.stream, WORKER_GROUP, self.consumer, ids)
                failing = False
            except Exception as exc:  # Redis away, or the group lost (flushed)
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "worker: cannot renew the claims on running tasks (%r)", exc)
                failing = True
                continue
            self._renewed(ids, kept, sent)

    def _renewed(self, ids: Sequence[str], kept: set[str], sent: float) -> None:
        """Record what a renewal of ``ids`` sent at loop time ``sent`` found: those
        ``kept`` are held until ``sent`` plus the visibility timeout, the others have
        another owner. The answer may come late (queued in a paused Redis) and be older
        than what a read, claim or confirmation has told since, which it never undoes: a
        lease is never shortened, and an entry confirmed as this worker's after
        ``sent`` is not given up for an answer about the time before."""
        confirmed = sent + self.visibility_timeout_s
        for entry_id in ids:
            held = self._held.get(entry_id)
            if held is None:  # finished or given up meanwhile
                continue
            if entry_id in kept:
                if confirmed > held:
                    self._held[entry_id] = confirmed
            elif entry_id in self._reporting:
                # Its result is being reported: the acknowledgement that ends the report
                # also takes the entry off the pending list, which is what this answer
                # may have seen. There is no handler left to cancel either way.
                continue
            elif held <= confirmed:
                self._lapse(entry_id, "another worker has claimed it")

    async def _fence(self) -> None:
        """Cancel the handlers whose claims could lapse soon (Redis has not confirmed
        them for most of a visibility timeout), until cancelled: past it another worker
        may claim the entry and run the same attempt."""
        loop = asyncio.get_running_loop()
        margin = self.visibility_timeout_s * LEASE_MARGIN_PART
        while True:
            await asyncio.sleep(self.visibility_timeout_s * LEASE_CHECK_PART)
            now = loop.time()
            for entry_id, until in list(self._held.items()):
                if now >= until - margin:
                    unconfirmed = now - (until - self.visibility_timeout_s)
                    why = f"Redis has not confirmed the claim for {unconfirmed:.1f}s"
                    if self._lapse(entry_id, why):
                        self._lapsed.add(entry_id)

    def _lapse(self, entry_id: str, why: str) -> bool:
        """Give up the claim on ``entry_id``: its handler is cancelled (a task being
        started is not started), unacknowledged, for another worker to claim. False when
        it was not held."""
        if self._held.pop(entry_id, None) is None:
            return False
        running = self._running.get(entry_id)
        if running is not None:
            log.warning("worker: cancelling task %s of %s: %s", entry_id, running.execution_id, why)
            running.task.cancel()
            self.lapsed += 1
            metrics.TASK_CLAIMS_LAPSED.inc()
        return True

    async def _watch_ended(self) -> None:
        """Every ``ended_check_interval_s``, cancel the handlers of executions that ended
        (until cancelled); each check is bounded by ENDED_CHECK_TIMEOUT_S."""
        if self._ended is None:
            return
        while True:
            await asyncio.sleep(self.ended_check_interval_s)
            try:
                await self._cancel_ended()
            except Exception as exc:  # Redis away for the acknowledgement: next time
                log.warning("worker: cannot cancel tasks of ended executions (%r)", exc)

    async def _read_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        group_ready = False
        own_pending = True  # tasks read before a restart under the same consumer name
        last_claim = loop.time() - self.visibility_timeout_s  # at once: a predecessor may have died
        while not stop.is_set():
            try:
                if not group_ready:
                    await self.bus.ensure_group(self.stream, WORKER_GROUP)
                    group_ready = True
                now = loop.time()
                free = self.concurrency - len(self._running)
                if free <= 0:
                    await asyncio.wait(
                        [r.task for r in self._running.values()],
                        timeout=self.block_ms / 1000,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    continue
                entries: list[TaskDelivery | Malformed] = []
                read_at = loop.time()  # a claim's lease runs from before its read
                if reclaimable := self._reclaimable(free):
                    entries = await self._reclaim(reclaimable)
                elif own_pending:
                    own_pending = False
                    entries = await self.bus.read_tasks(
                        WORKER_GROUP, self.consumer, {self.stream: "0"}, count=free
                    )
                elif now - last_claim >= self.visibility_timeout_s / 2:
                    last_claim = now
                    entries = await self._claim_stale(free)
                if not entries:
                    read_at = loop.time()
                    entries = await self.bus.read_tasks(
                        WORKER_GROUP, self.consumer, [self.stream], free, self.block_ms
                    )
                await self._start(entries, read_at)
            except asyncio.CancelledError:
                raise
            except MissingGroup:
                log.warning("worker: task group missing (Redis flushed?); creating it")
                group_ready = False
                await sleep_or_stop(stop, 1.0)
            except Exception as exc:
                log.warning("worker loop failed (%r); retrying", exc)
                await sleep_or_stop(stop, 1.0)

    async def _claim_stale(self, count: int) -> list[TaskDelivery | Malformed]:
        """Claim tasks idle for a visibility timeout; give up on those delivered too often."""
        claimed = await self.bus.claim_tasks(
            self.stream,
            WORKER_GROUP,
            self.consumer,
            int(self.visibility_timeout_s * 1000),
            count,
        )
        return await self._deliverable(claimed)

    def _reclaimable(self, count: int) -> list[str]:
        """Up to ``count`` lapsed entries whose handler has ended and whose result (if
        it had one) is not being reported."""
        if not self._lapsed:
            return []
        busy = self._running.keys() | self._reporting
        return list(self._lapsed - busy)[:count]

    async def _reclaim(self, ids: list[str]) -> list[TaskDelivery | Malformed]:
        """Claim ``ids`` (lapsed entries) again where they are still this worker's: no
        other worker has claimed them, so none runs them; give up on those delivered too
        often. The others (claimed by another worker, acknowledged) are forgotten."""
        claimed = await self.bus.reclaim_tasks(self.stream, WORKER_GROUP, self.consumer, ids)
        self._lapsed.difference_update(ids)
        for delivery in claimed:
            log.info(
                "worker: running task %s again: Redis holds it for this worker still",
                delivery.entry.id,
            )
        return await self._deliverable(claimed)

    async def _deliverable(
        self, claimed: list[TaskDelivery | Malformed]
    ) -> list[TaskDelivery | Malformed]:
        """Those of ``claimed`` to start: not those this worker still runs or reports,
        and not those delivered too often (given up)."""
        live: list[TaskDelivery | Malformed] = []
        for delivery in claimed:
            if delivery.entry.id in self._running or delivery.entry.id in self._reporting:
                continue
            if delivery.entry.deliveries > self.max_deliveries:
                await self._give_up(delivery)
            else:
                live.append(delivery)
        return live

    async def _give_up(self, delivery: TaskDelivery | Malformed) -> None:
        """Fail the task's attempt with DELIVERY_EXCEEDED, then dead-letter the entry (in
        this order: a crash in between reports the failure twice, and decide ignores the
        second report, where the other order could lose it)."""
        entry = delivery.entry
        if isinstance(delivery, TaskDelivery):
            task = delivery.message
            log.error(
                "task %s of %s delivered %d times; failing it",
                task.task_id,
                task.execution_id,
                entry.deliveries,
            )
            result = TaskResult(
                task_id=task.task_id,
                ok=False,
                error=DELIVERY_EXCEEDED,
                cause=(
                    f"task {task.resource!r} was delivered {entry.deliveries} times "
                    f"without a result (the limit is {self.max_deliveries})"
                ),
                traceparent=task.traceparent,
            )
            await self.bus.add_trigger(task.execution_id, result)
        await self.bus.dead_letter(entry, WORKER_GROUP, "too many deliveries")
        self.dead_lettered += 1

    async def _start(
        self, deliveries: list[TaskDelivery | Malformed], read_at: float | None = None
    ) -> None:
        """Spawn a handler per task; malformed entries are dead-lettered, tasks of ended
        executions acknowledged without running. ``read_at`` (loop time) is when the read
        that delivered them was sent: their claims are held from then."""
        if read_at is None:
            read_at = asyncio.get_running_loop().time()
        tasks: list[TaskDelivery] = []
        for delivery in deliveries:
            if delivery.entry.id in self._running or delivery.entry.id in self._reporting:
                continue
            match delivery:
                case Malformed(entry=entry, reason=reason):
                    log.error("dropping malformed task %s: %s", entry.id, reason)
                    await self.bus.dead_letter(entry, WORKER_GROUP, "malformed")
                case TaskDelivery():
                    tasks.append(delivery)
                case _:
                    assert_never(delivery)
        # Renewed by the claim keeper until they run: the check may wait for a lock.
        for t in tasks:
            self._held[t.entry.id] = read_at + self.visibility_timeout_s
        await self._confirm_stale(tasks)
        try:
            ended: set[UUID] = set()
            if self._ended is not None and tasks:
                try:
                    ended = await asyncio.wait_for(
                        self._ended([t.message.execution_id for t in tasks]),
                        ENDED_CHECK_TIMEOUT_S,
                    )
                except Exception as exc:  # PostgreSQL away or slow: run them anyway
                    log.warning("worker: cannot check for ended executions: %r", exc)
            for delivery in tasks:
                entry, execution_id = delivery.entry, delivery.message.execution_id
                if entry.id not in self._held:  # the claim lapsed during the check
                    continue
                if execution_id in ended:
                    self._held.pop(entry.id, None)
                    await self.bus.ack(self.stream, WORKER_GROUP, [entry.id])
                    self.skipped += 1
                    continue
                task = asyncio.create_task(self._run_task(delivery))
                self.started += 1
                message = delivery.message
                self._running[entry.id] = _Running(
                    execution_id, task, message.resource, message.attempt, time.monotonic()
                )
                task.add_done_callback(self._forget(entry.id))
        finally:  # a task not started (an error) is not held: it is claimed again later
            for t in tasks:
                if t.entry.id not in self._running:
                    self._held.pop(t.entry.id, None)

    async def _confirm_stale(self, tasks: Sequence[TaskDelivery]) -> None:
        """Renew at once the claims of ``tasks`` whose read was sent more than half a
        visibility timeout ago (a read or claim queued in a paused Redis: Redis gave the
        entry a fresh idle time when it ran the command, but this worker cannot know
        when): without this, the fence would cancel such a handler just after it began,
        and the attempt would run once more for nothing. Those Redis does not confirm as
        this worker's are not started."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        stale = [
            t.entry.id
            for t in tasks
            if self._held.get(t.entry.id, now) - now < self.visibility_timeout_s / 2
        ]
        if not stale:
            return
        try:
            kept = await self.bus.renew(self.stream, WORKER_GROUP, self.consumer, stale)
        except Exception as exc:  # Redis away again: not started, claimed again later
            log.warning("worker: cannot confirm the claims just read (%r)", exc)
            kept = set()
        for entry_id in stale:
            held = self._held.get(entry_id)
            if entry_id in kept and held is not None:
                self._held[entry_id] = max(held, now + self.visibility_timeout_s)
            else:
                self._held.pop(entry_id, None)

    def _forget(self, entry_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(task: asyncio.Task[None]) -> None:
            self._running.pop(entry_id, None)
            self._held.pop(entry_id, None)
            log_failure(task, f"task runner of entry {entry_id}")

        return forget

    async def _cancel_ended(self) -> None:
        """Cancel the handlers of executions that have ended, and acknowledge their tasks."""
        assert self._ended is not None
        if not self._running:
            return
        try:
            ended = await asyncio.wait_for(
                self._ended(list({r.execution_id for r in self._running.values()})),
                ENDED_CHECK_TIMEOUT_S,
            )
        except Exception as exc:  # PostgreSQL away or slow: check again at the next interval
            log.debug("worker: cannot check for ended executions: %r", exc)
            return
        doomed = {i: r for i, r in self._running.items() if r.execution_id in ended}
        if not doomed:
            return
        for running in doomed.values():
            running.task.cancel()
        await asyncio.wait([r.task for r in doomed.values()])
        await self.bus.ack(self.stream, WORKER_GROUP, list(doomed))
        self.cancelled += len(doomed)

    async def _drain(self) -> None:
        """Give running handlers until the deadline, then cancel them unacknowledged (they
        are claimed by another worker after the visibility timeout)."""
        if not self._running:
            return
        tasks = [r.task for r in self._running.values()]
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        # Reports outlive their cancelled runners (shielded): one more grace period to
        # get finished results out, then they give up (the tasks run again elsewhere).
        if self._reports:
            await asyncio.wait(self._reports, timeout=self.shutdown_grace_s)
        self._abandon.set()
        if self._reports:
            await asyncio.wait(self._reports)

    async def _run_task(self, delivery: TaskDelivery) -> None:
        task = delivery.message
        execution_id_var.set(str(task.execution_id))  # each task runs in its own asyncio task

        async def heartbeat() -> None:
            traceparent = traceparent_of(current_span()) if self.tracer else ""
            message = Heartbeat(task_id=task.task_id, traceparent=traceparent)
            await self.bus.add_trigger(task.execution_id, message)
            metrics.TASK_HEARTBEATS.inc()

        ctx = TaskContext(
            execution_id=str(task.execution_id),
            state=task.state,
            attempt=task.attempt,
            task_id=task.task_id,
            heartbeat=heartbeat,
            tracer=self.tracer,
            task_token=task.task_token,
        )
        if self.tracer is None:
            result = await self._call(task, ctx)
        else:
            result = await self._traced_call(self.tracer, delivery, ctx)
        # Recording the outcome is shielded: a shutdown must not lose a finished result.
        await asyncio.shield(self._start_report(delivery, result))

    def _start_report(self, delivery: TaskDelivery, result: TaskResult) -> asyncio.Task[bool]:
        """`_report` on a task of its own, its entry known to be reporting meanwhile;
        once the report has acknowledged the entry, the entry is no longer held: the
        claim has ended, and a renewal that no longer finds it pending must not take
        that for another worker's claim (the runner may end a loop turn later)."""
        entry_id = delivery.entry.id
        report = asyncio.create_task(self._report(delivery, result))
        self._reports.add(report)
        self._reporting.add(entry_id)

        def settled(done: asyncio.Task[bool]) -> None:
            self._reports.discard(done)
            self._reporting.discard(entry_id)
            if not done.cancelled() and done.exception() is None and done.result():
                self._held.pop(entry_id, None)

        report.add_done_callback(settled)
        report.add_done_callback(
            lambda done: log_failure(done, f"report of task {delivery.message.task_id}")
        )
        return report

    async def _traced_call(
        self, tracer: Tracer, delivery: TaskDelivery, ctx: TaskContext
    ) -> TaskResult:
        """`_call` inside the attempt's span (a child of the execution's recorded context,
        which the task carries; its publish an event of it); the result carries it, so
        the decision on it is its child. A retry is another attempt, hence another span."""
        task = delivery.message
        with start_child(
            tracer,
            "steplog.task",
            task.traceparent,
            SpanKind.CONSUMER,
            {
                EXECUTION_ID: ctx.execution_id,
                "steplog.task.state": task.state,
                "steplog.task.attempt": task.attempt,
                "steplog.task.resource": task.resource,
            },
        ) as span:
            record_publish(span, delivery.entry.id)
            result = await self._call(task, ctx)
            outcome: dict[str, AttributeValue] = {"steplog.task.ok": result.ok}
            if not result.ok:
                outcome["steplog.task.error"] = result.error or ""
                span.set_status(Status(StatusCode.ERROR, result.error))
            set_own_attributes(span, outcome)
            return msgspec.structs.replace(result, traceparent=traceparent_of(span))

    async def _call(self, task: TaskMessage, ctx: TaskContext) -> TaskResult:
        # A .waitForTaskToken resource runs its base resource's handler.
        handler = self.registry.get(base_resource(task.resource))
        registered = handler is not None
        with metrics.TaskObservation(task.resource, task.attempt, registered=registered) as seen:
            if handler is None:
                seen.result = TaskResult(
                    task_id=task.task_id,
                    ok=False,
                    error="States.TaskFailed",
                    cause=f"no handler is registered for resource {task.resource!r}",
                )
            else:
                seen.result = await self._run_handler(handler, task, ctx)
            return seen.result

    async def _run_handler(
        self, handler: Handler, task: TaskMessage, ctx: TaskContext
    ) -> TaskResult:
        try:
            value = handler(task.input, ctx)
            if inspect.isawaitable(value):
                value = await value
            return TaskResult(task_id=task.task_id, ok=True, output=value)
        except TaskFailure as failure:
            return TaskResult(
                task_id=task.task_id, ok=False, error=failure.error, cause=failure.cause
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("task %s failed: %r", task.task_id, exc)
            return TaskResult(
                task_id=task.task_id, ok=False, error=type(exc).__name__, cause=str(exc)
            )

    async def _report(self, delivery: TaskDelivery, result: TaskResult) -> bool:
        """Add the result to the execution's triggers, then acknowledge the task. While
        Redis does not answer, both are retried with a back-off until the attempt's
        own deadline (``report_budget_s``); a result given up on is logged and the task,
        left unacknowledged, runs again after the visibility timeout. Whether the entry
        was acknowledged."""
        task = delivery.message
        deadline = asyncio.get_running_loop().time() + self.report_budget_s(task)
        # A task waiting for its token: the handler's success only hands the token on
        # (the callback brings the result); its failure fails the attempt as usual.
        waits = bool(task.task_token) and result.ok
        acked = True
        if waits:
            acked = await self._retrying(
                f"acknowledge task {task.task_id}",
                lambda: self.bus.ack(self.stream, WORKER_GROUP, [delivery.entry.id]),
                deadline,
            )
        elif not await self._retrying(
            f"report the result of task {task.task_id}",
            # The result, then the acknowledgement, in one round trip (Bus.report).
            lambda: self.bus.report(
                task.execution_id, result, self.stream, WORKER_GROUP, delivery.entry.id
            ),
            deadline,
        ):
            return False
        self.completed += 1  # reported (a failed ack only means it may run again)
        return acked

    def report_budget_s(self, task: TaskMessage) -> float:
        """How long a finished result is kept for reporting: until the attempt times out
        (after which the execution ignores it) when the Task state has TimeoutSeconds,
        else ``visibility_timeout_s * max_deliveries`` (about as long as the task could
        stay unreported by dead workers before it is given up)."""
        bound = self.visibility_timeout_s * self.max_deliveries
        if task.timeout_due:
            try:
                due = parse_iso(task.timeout_due)
            except ValueError:
                return bound
            return (due - self.clock()).total_seconds()
        return bound

    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[object]], deadline: float
    ) -> bool:
        """``call()`` until it succeeds (True), retried with a back-off while Redis does
        not answer; False when the deadline passes, the worker gives up at shutdown, or
        Redis refuses the command (nothing to retry)."""
        loop = asyncio.get_running_loop()
        delay = REPORT_BACKOFF_MIN_S
        while True:
            try:
                await call()
                return True
            except MissingGroup:
                # Redis lost the task stream's group (flushed): nothing left to acknowledge.
                log.warning("cannot %s: the group is gone (Redis flushed?)", what)
                return False
            except Unavailable as exc:
                if loop.time() + delay > deadline or self._abandon.is_set():
                    log.error("giving up: cannot %s: %r; the task will run again", what, exc)
                    return False
                # Once per report at WARNING: an outage would otherwise log a line per
                # running task every few seconds.
                level = logging.WARNING if delay == REPORT_BACKOFF_MIN_S else logging.DEBUG
                log.log(level, "cannot %s yet (%r); retrying with a back-off", what, exc)
            except BusError as exc:
                log.error("cannot %s: %r; the task will run again", what, exc)
                return False
            await sleep_or_stop(self._abandon, delay)
            delay = min(delay * 2, REPORT_BACKOFF_MAX_S)
