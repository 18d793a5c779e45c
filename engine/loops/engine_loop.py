"""The engine loop: trigger streams -> decide -> append.

An ``Engine`` reads its share of the partitions' trigger streams through the
consumer group "engine" (each partition is read by one live engine at a time:
engine.loops.partition_owners; so one engine decides each execution and
engines do not conflict), turns each entry into a decide
trigger, loads the execution's state (from its in-memory cache, checked by
seq, else by replay from PostgreSQL), decides, appends with the expected seq
and acknowledges the entry only after the append committed. A conflict means
another engine appended first: reload and decide again (decide drops
triggers that became obsolete). Triggers of one execution are handled in
stream order; different executions run concurrently. Per batch of entries
the work is batched too: the executions' states are loaded by one query read
after the entries (`_load_states`), their decisions are appended together
(group commit: engine.adapters.group_commit, each still checked by its
expected seq) and the entries recorded are acknowledged with one XACK per
stream at the batch's end.

Entries left unacknowledged by a dead engine are claimed after a visibility
timeout (XAUTOCLAIM). A live engine keeps the entries it holds (the batch it is
handling, those waiting for a retry) from being claimed by touching them every
third of the visibility timeout, on a task of its own: an append that hangs on a
lock does not hand its trigger to another engine, which would decide it again
(the expected-seq fence makes that safe, not free). An entry that carries no message
(engine.adapters.bus.Malformed) is dead-lettered.

No execution is stranded by its own data (decide itself never raises: see
engine.core.decide). A trigger whose events the database refuses for their data
(InvalidRequest), or whose workflow no longer compiles (InvalidDefinition), fails
its execution at once with States.Runtime (EngineService.fail_execution) and is
acknowledged. PostgreSQL or Redis being away is retried with a back-off for as
long as it lasts. Any other error is retried too, but an entry that fails
``max_deliveries`` times here, or is delivered more than ``max_deliveries`` times
across engines, fails its execution and is dead-lettered; the metrics
``steplog_triggers_dead_lettered_total`` and
``steplog_executions_failed_by_engine_total`` count them (engine.loops.metrics).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import assert_never
from uuid import UUID

import msgspec
from opentelemetry.trace import SpanKind, Tracer

from engine import messages
from engine.adapters.bus import Bus, Malformed, TriggerDelivery
from engine.core.state import ExecutionState
from engine.core.triggers import Trigger
from engine.errors import (
    ConcurrencyError,
    InvalidDefinition,
    InvalidRequest,
    MissingGroup,
    NotFound,
    Unavailable,
)
from engine.logcontext import execution_id_var
from engine.loops import metrics
from engine.loops.metrics import EXECUTIONS_FAILED_BY_ENGINE, TRIGGERS_DEAD_LETTERED
from engine.loops.partition_owners import PartitionOwners
from engine.loops.tracing import EXECUTION_ID, ExecutionTraces, record_publish, start_child
from engine.messages import ENGINE_GROUP
from engine.service import EngineService, describe_decision
from engine.stopping import cancel_and_wait, log_failure, sleep_or_stop
from engine.tracecontext import current_span

log = logging.getLogger("steplog.engine")


class StateCache:
    """Recently used states of running executions, newest last, bounded both in states
    (``size``) and in bytes (``max_bytes``, measured as each state's JSON length: the
    data an execution carries is what makes one state large; in memory a state takes a
    few times that). A state is only a starting point: events after its seq are always
    loaded before deciding. A state larger than a tenth of the budget is not kept (it
    would evict many others; it is loaded again at each decision)."""

    def __init__(self, size: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._states: OrderedDict[UUID, tuple[ExecutionState, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, execution_id: UUID) -> ExecutionState | None:
        held = self._states.get(execution_id)
        if held is None:
            return None
        self._states.move_to_end(execution_id)
        return held[0]

    def put(self, execution_id: UUID, state: ExecutionState) -> None:
        self.drop(execution_id)
        if self._size <= 0:
            return
        cost = len(_json(state))
        if cost > self.max_bytes // 10:
            return
        self._states[execution_id] = (state, cost)
        self.bytes += cost
        while len(self._states) > self._size or self.bytes > self.max_bytes:
            _, (_, freed) = self._states.popitem(last=False)
            self.bytes -= freed

    def drop(self, execution_id: UUID) -> None:
        held = self._states.pop(execution_id, None)
        if held is not None:
            self.bytes -= held[1]


_json = msgspec.json.Encoder().encode


class Engine:
    def __init__(
        self,
        service: EngineService,
        bus: Bus,
        *,
        consumer: str | None = None,
        cache_size: int = 10_000,
        cache_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 200,
        block_ms: int = 1000,
        visibility_timeout_s: float = 30.0,
        max_deliveries: int = 10,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        tracer: Tracer | None = None,
        membership_s: float = 1.0,
        membership_ttl_s: float = 5.0,
    ) -> None:
        self.service = service
        # A span per decision (engine.loops.tracing); None: tracing off.
        self.tracer = tracer
        self.traces = ExecutionTraces(service.store, cache_size)
        self.bus = bus
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        # The trigger partitions this engine reads (engine.loops.partition_owners).
        self.owners = PartitionOwners(bus, self.consumer, membership_s, membership_ttl_s)
        metrics.PARTITIONS_OWNED.set_function(lambda: len(self.owners.owned))
        self.cache = StateCache(cache_size, cache_bytes)
        metrics.STATE_CACHE_STATES.set_function(lambda: len(self.cache))
        metrics.STATE_CACHE_BYTES.set_function(lambda: self.cache.bytes)
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.clock = clock
        self.handled = 0
        self.deciding: dict[UUID, float] = {}  # execution -> since (monotonic): the monitor
        # Entries whose apply failed (e.g. PostgreSQL was unreachable), oldest first.
        self._retry: list[TriggerDelivery] = []
        # Failed attempts of entries by (stream, id), not counting PostgreSQL or Redis
        # being away: past max_deliveries the trigger is given up (see _give_up).
        self._failures: dict[tuple[str, str], int] = {}
        self._handling: list[TriggerDelivery | Malformed] = []  # the batch being handled

    async def ensure_groups(self) -> None:
        for stream in self.bus.triggers_streams():
            await self.bus.ensure_group(stream, ENGINE_GROUP)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume triggers until ``stop`` is set; never returns early on errors of
        PostgreSQL or Redis (they are logged and retried with a back-off). The entries it
        holds are kept alive meanwhile (`_keep_claims`)."""
        keepers = [
            asyncio.create_task(self._keep_claims()),
            asyncio.create_task(self._keep_membership()),
        ]
        keepers[0].add_done_callback(lambda done: log_failure(done, "engine claim keeper"))
        keepers[1].add_done_callback(lambda done: log_failure(done, "engine membership keeper"))
        try:
            await self._consume(stop)
        finally:
            await cancel_and_wait(keepers)
            try:  # the other engines take this one's partitions at their next renewal
                async with asyncio.timeout(2):
                    await self.owners.leave()
            except Exception as exc:  # (its membership lapses by itself)
                log.warning("engine: cannot leave the membership (%r)", exc)

    async def _keep_membership(self) -> None:
        """Every ``membership_s``, renew this engine's membership and take its share of
        the partitions (until cancelled). While Redis does not answer, the last share is
        kept (reads fail meanwhile anyway)."""
        failing = False
        while True:
            await asyncio.sleep(self.owners.every_s)
            try:
                await self.owners.renew()
            except Exception as exc:
                if not failing:
                    log.warning("engine: cannot renew its membership (%r)", exc)
                failing = True
            else:
                failing = False

    async def _keep_claims(self) -> None:
        """Every ``visibility_timeout_s / 3``, touch the entries this engine holds (until
        cancelled). Only Redis is called: a decision or an append that hangs does not let
        the claims lapse. An entry acknowledged meanwhile is not pending: untouched."""
        every = self.visibility_timeout_s / 3
        while True:
            await asyncio.sleep(every)
            by_stream: dict[str, list[str]] = {}
            for delivery in _unique([*self._handling, *self._retry]):
                by_stream.setdefault(delivery.entry.stream, []).append(delivery.entry.id)
            for stream, ids in by_stream.items():
                try:
                    await self.bus.renew(stream, ENGINE_GROUP, self.consumer, ids)
                except Exception as exc:  # Redis away: the next round tries again
                    log.warning("engine: cannot touch held triggers (%r)", exc)

    async def _consume(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        every_stream = self.bus.triggers_streams()
        groups_ready = False
        own_pending = True  # first this consumer's pending entries (a restart, same name)
        last_claim = -1e18
        backoff = 0.0
        while not stop.is_set():
            try:
                if not groups_ready:
                    await self.ensure_groups()
                    await self.owners.renew()
                    groups_ready = True
                entries: list[TriggerDelivery | Malformed] = []
                if own_pending:  # (whichever partitions they are on)
                    entries = await self.bus.read_triggers(
                        ENGINE_GROUP,
                        self.consumer,
                        dict.fromkeys(every_stream, "0"),
                        self.batch_size,
                    )
                    own_pending = len(entries) >= self.batch_size
                if loop.time() - last_claim > self.visibility_timeout_s / 2:
                    last_claim = loop.time()
                    entries += await self.claim_stale()
                if not entries:
                    # Do not block while failed triggers wait for their retry.
                    block = self.block_ms if not self._retry else min(self.block_ms, 100)
                    if streams := self.owners.streams():
                        entries = await self.bus.read_triggers(
                            ENGINE_GROUP, self.consumer, streams, self.batch_size, block
                        )
                    else:  # (more engines than partitions: this one stands by)
                        await sleep_or_stop(stop, block / 1000)
                batch = _unique([*self._retry, *entries])
                self._handling = batch
                self._retry = []
                if batch:
                    try:
                        await self.handle(batch)
                    finally:
                        self._handling = []
                backoff = min(max(backoff * 2, 0.2), 5.0) if self._retry else 0.0
            except asyncio.CancelledError:
                raise
            except MissingGroup:
                log.warning("engine: trigger group missing (Redis flushed?); creating it")
                groups_ready = False
                backoff = min(max(backoff * 2, 0.5), 5.0)
            except Exception as exc:
                log.warning("engine loop failed (%r); retrying", exc)
                backoff = min(max(backoff * 2, 0.5), 5.0)
            if backoff:
                await sleep_or_stop(stop, backoff)

    async def claim_stale(self) -> list[TriggerDelivery | Malformed]:
        """Entries of the engine group left unacknowledged for a visibility timeout (their
        consumer died or is stuck), claimed for this consumer; those delivered more than
        ``max_deliveries`` times are dead-lettered instead. Skipped while PostgreSQL does
        not answer or refuses writes (read-only after a failover): triggers that cannot be
        applied anywhere are not poison, and claiming them would only count deliveries
        towards the dead-letter limit."""
        await self.service.store.ping_writable()
        min_idle = int(self.visibility_timeout_s * 1000)
        live: list[TriggerDelivery | Malformed] = []
        for stream in self.bus.triggers_streams():
            for delivery in await self.bus.claim_triggers(
                stream, ENGINE_GROUP, self.consumer, min_idle, self.batch_size
            ):
                entry = delivery.entry
                if entry.deliveries <= self.max_deliveries:
                    live.append(delivery)
                    continue
                log.error(
                    "dead-lettering trigger %s on %s after %d deliveries",
                    entry.id,
                    stream,
                    entry.deliveries,
                )
                if isinstance(delivery, TriggerDelivery):
                    cause = (
                        f"The engine gave up on a {_kind(delivery)} trigger of this execution: "
                        f"it was delivered {entry.deliveries} times without being recorded "
                        f"(the limit is {self.max_deliveries})."
                    )
                    if not await self._fail(delivery.execution_id, cause, "dead_lettered"):
                        continue  # PostgreSQL went away: claimed again later
                await self.bus.dead_letter(entry, ENGINE_GROUP, "too many deliveries")
                TRIGGERS_DEAD_LETTERED.labels("too_many_deliveries").inc()
        return live

    async def handle(self, deliveries: list[TriggerDelivery | Malformed]) -> None:
        """Handle a batch: per execution in order, executions concurrently; entries that
        carry no trigger are dead-lettered."""
        by_execution: dict[UUID, list[TriggerDelivery]] = {}
        for delivery in deliveries:
            match delivery:
                case Malformed(entry=entry, reason=reason):
                    log.error(
                        "dropping malformed trigger %s on %s: %s", entry.id, entry.stream, reason
                    )
                    await self.bus.dead_letter(entry, ENGINE_GROUP, "malformed")
                    TRIGGERS_DEAD_LETTERED.labels("malformed").inc()
                case TriggerDelivery(execution_id=execution_id):
                    by_execution.setdefault(execution_id, []).append(delivery)
                case _:
                    assert_never(delivery)
        # Deciding from here on (the monitor's view, and what the claim keeper holds).
        since = time.monotonic()
        for eid in by_execution:
            self.deciding[eid] = since
        try:
            fresh = await self._load_states(list(by_execution))
        except BaseException:
            for eid in by_execution:
                self.deciding.pop(eid, None)
            raise
        # Every execution's handling runs to its end before the next batch (so no two
        # handle one execution at once); their appends meet in one statement
        # (EngineService.appends, group commit) and the entries recorded are acknowledged
        # together at the end, one XACK per stream. The first failure (e.g. Redis away
        # for the acknowledgement) is raised for the loop's back-off, the others logged.
        recorded: list[TriggerDelivery] = []
        results = await asyncio.gather(
            *(
                self._deciding(eid, self._handle_execution(eid, items, fresh.get(eid), recorded))
                for eid, items in by_execution.items()
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        by_stream: dict[str, list[str]] = {}
        for delivery in recorded:
            by_stream.setdefault(delivery.entry.stream, []).append(delivery.entry.id)
        try:
            for stream, ids in by_stream.items():
                await self.bus.ack(stream, ENGINE_GROUP, ids)
        except Exception as exc:  # left pending: redelivered, and decide ignores them
            errors.insert(0, exc)
        else:
            for delivery in recorded:
                self._failures.pop((delivery.entry.stream, delivery.entry.id), None)
            self.handled += len(recorded)
        for error in errors[1:]:
            log.warning("engine: handling triggers failed: %r", error)
        if errors:
            raise errors[0]

    async def _load_states(self, execution_ids: list[UUID]) -> dict[UUID, ExecutionState]:
        """The batch's executions' states by one query, read after their triggers: every
        event a trigger follows from was committed before it was sent, so each state is
        recent enough to decide the execution's first trigger of the batch on (an
        append made on it still checks the expected seq), and the states those
        decisions return are for the next ones. Empty when PostgreSQL does not answer:
        each execution then loads its own (and handles the failure as its own)."""
        try:
            return await self.service.load_states(
                {eid: self.cache.get(eid) for eid in execution_ids}
            )
        except Exception as exc:
            log.warning("engine: cannot load the batch's states (%r)", exc)
            return {}

    async def _handle_execution(
        self,
        execution_id: UUID,
        deliveries: list[TriggerDelivery],
        fresh: ExecutionState | None,
        recorded: list[TriggerDelivery],
    ) -> None:
        """Decide ``deliveries`` in order, the first on ``fresh`` (a state read after
        them, see `_load_states`; None: loaded here) and each next one on the state the
        previous decision left; add each recorded (or dropped) trigger to ``recorded``
        for the batch's acknowledgement."""
        # Runs as its own task (gather), so this tags only this execution's log lines.
        execution_id_var.set(str(execution_id))
        for index, delivery in enumerate(deliveries):
            entry = delivery.entry
            key = (entry.stream, entry.id)
            trigger = messages.to_trigger(delivery.message, self.clock())
            current, fresh = fresh, None
            try:
                fresh = await self._decide(execution_id, trigger, delivery, current)
            except NotFound:
                log.warning("trigger %s for unknown execution %s", entry.id, execution_id)
            except (InvalidRequest, InvalidDefinition) as exc:
                # The execution's own data or definition: every retry would fail the
                # same way, so the execution fails at once (ExecutionFailed recorded).
                self.cache.drop(execution_id)
                log.warning("trigger %s for %s cannot be recorded: %s", entry.id, execution_id, exc)
                cause, reason = _deterministic_cause(delivery, exc)
                if not await self._fail(execution_id, cause, reason):
                    self._retry.extend(deliveries[index:])
                    return
            except Exception as exc:
                # Left unacknowledged, with the execution's later triggers (their order
                # matters): retried by this engine after a back-off, or claimed by another
                # after the visibility timeout if this one dies. PostgreSQL or Redis away
                # is nobody's fault and is retried for as long as it lasts; any other
                # error counts towards max_deliveries, past which the execution fails and
                # the trigger is dead-lettered.
                self.cache.drop(execution_id)
                if isinstance(exc, Unavailable):
                    log.warning("trigger %s for %s failed: %r", entry.id, execution_id, exc)
                    self._retry.extend(deliveries[index:])
                    return
                log.exception("trigger %s for %s failed", entry.id, execution_id)
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                if failures < self.max_deliveries or not await self._give_up(delivery, exc):
                    self._retry.extend(deliveries[index:])
                    return
                self._failures.pop(key, None)
                continue  # dead-lettered (and acknowledged) by _give_up
            recorded.append(delivery)

    async def _deciding(self, execution_id: UUID, handling: Awaitable[None]) -> None:
        """Await ``handling`` with ``execution_id`` in ``deciding`` (the monitor's view)."""
        self.deciding.setdefault(execution_id, time.monotonic())
        try:
            await handling
        finally:
            self.deciding.pop(execution_id, None)

    async def _give_up(self, delivery: TriggerDelivery, exc: Exception) -> bool:
        """Fail the execution of a trigger that failed ``max_deliveries`` times, then
        dead-letter the trigger (in this order: a crash in between redelivers a trigger
        that decide then ignores). False when PostgreSQL does not answer (retry later)."""
        entry = delivery.entry
        cause = (
            f"The engine gave up on a {_kind(delivery)} trigger of this execution after "
            f"{self.max_deliveries} failed attempts; the last error: "
            f"{type(exc).__name__}: {exc}"
        )
        if not await self._fail(delivery.execution_id, cause, "dead_lettered"):
            return False
        log.error(
            "dead-lettering trigger %s on %s after %d failed attempts",
            entry.id,
            entry.stream,
            self.max_deliveries,
        )
        await self.bus.dead_letter(entry, ENGINE_GROUP, "repeated failure")
        TRIGGERS_DEAD_LETTERED.labels("repeated_failure").inc()
        return True

    async def _fail(self, execution_id: UUID, cause: str, reason: str) -> bool:
        """Fail the execution with States.Runtime (EngineService.fail_execution). True
        when it has ended (now or before) or cannot be failed at all (unknown, or its
        history cannot be loaded: the trigger is then dead-lettered with it as it is);
        False when PostgreSQL does not answer."""
        try:
            state, failed = await self.service.fail_execution(execution_id, cause, self.clock())
        except NotFound:
            return True
        except Unavailable as exc:
            log.warning("cannot fail execution %s now: %r", execution_id, exc)
            return False
        except Exception:
            log.exception("cannot fail execution %s", execution_id)
            return True
        finally:
            self.cache.drop(execution_id)
        if failed:
            EXECUTIONS_FAILED_BY_ENGINE.labels(reason).inc()
            log.error("execution %s failed: %s", execution_id, state.cause)
        return True

    async def _decide(
        self,
        execution_id: UUID,
        trigger: Trigger,
        delivery: TriggerDelivery,
        fresh: ExecutionState | None = None,
    ) -> ExecutionState:
        """`apply` inside a decision span, the child of the message's sender's span (or of
        the execution's recorded context, for a message sent without one). A Begin's
        publish is an event of it."""
        if self.tracer is None:
            return await self.apply(execution_id, trigger, fresh)
        message = delivery.message
        parent = message.traceparent or await self.traces.get(execution_id)
        with start_child(
            self.tracer,
            "steplog.decide",
            parent,
            SpanKind.CONSUMER,
            {EXECUTION_ID: str(execution_id), "steplog.trigger": type(message).__name__},
        ) as span:
            if type(message) is messages.Begin:
                record_publish(span, delivery.entry.id)
            return await self.apply(execution_id, trigger, fresh)

    async def apply(
        self, execution_id: UUID, trigger: Trigger, fresh: ExecutionState | None = None
    ) -> ExecutionState:
        """Load (unless given a ``fresh`` state, read after the trigger), decide, append;
        on a conflict reload and decide again."""
        began = time.perf_counter()
        for _ in range(50):
            if fresh is not None:
                state, fresh = fresh, None
            else:
                cached = self.cache.get(execution_id)
                state = await self.service.load_state(execution_id, cached=cached)
            try:
                with metrics.APPEND_SECONDS.time():
                    decision, _stored = await self.service.apply(state, trigger)
            except ConcurrencyError:
                metrics.APPEND_CONFLICTS.inc()
                self.cache.drop(execution_id)
                continue
            metrics.count_decision(decision.events, time.perf_counter() - began)
            if decision.ignored:
                log.debug("execution %s: trigger ignored: %s", execution_id, decision.ignored)
            if self.tracer is not None:
                describe_decision(
                    current_span(),
                    decision.events,
                    decision.ignored,
                    decision.state.status,
                )
            self.cache.put(execution_id, decision.state)
            return decision.state
        raise ConcurrencyError(f"execution {execution_id}: too many conflicting appends")


def _kind(delivery: TriggerDelivery) -> str:
    """The trigger's kind: its message's class (Begin, TaskResult, Heartbeat, TimerFired)."""
    return type(delivery.message).__name__


def _deterministic_cause(
    delivery: TriggerDelivery, exc: InvalidRequest | InvalidDefinition
) -> tuple[str, str]:
    """The cause recorded for an execution failed by an error of its own, and the metric's
    reason."""
    kind = _kind(delivery)
    if isinstance(exc, InvalidDefinition):
        return (
            f"The engine could not decide a {kind} trigger of this execution: its workflow "
            f"definition no longer compiles ({exc.message}).",
            "invalid_definition",
        )
    return (
        f"The engine could not record the execution's next step (on a {kind} trigger): "
        f"the database refused its data ({exc.message}).",
        "invalid_data",
    )


def _unique(
    deliveries: list[TriggerDelivery | Malformed],
) -> list[TriggerDelivery | Malformed]:
    """``deliveries`` without repeats of one (stream, id), first occurrence kept."""
    seen: set[tuple[str, str]] = set()
    out: list[TriggerDelivery | Malformed] = []
    for delivery in deliveries:
        key = (delivery.entry.stream, delivery.entry.id)
        if key not in seen:
            seen.add(key)
            out.append(delivery)
    return out
