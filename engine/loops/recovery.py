"""Recovery of Redis from PostgreSQL after Redis lost its data (DESIGN "Postgres to Redis").

Redis only carries copies and pointers of what PostgreSQL holds, so everything a
running execution waits for can be rebuilt from the event log. A sentinel key
(`Keys.sentinel`) marks a Redis that holds steplog's work; every engine process
checks it every ``check_interval_s``. When it is missing (FLUSHALL, a new or
emptied server), one process at a time (a PostgreSQL advisory lock) rebuilds:

1. the engine's consumer groups on every trigger stream, and the workers' group
   on the task stream of every queue it republishes to (consumers also re-create
   their own groups when they meet NOGROUP);
2. timers: every fired timer is re-armed, because its trigger may be gone (timers
   themselves live in PostgreSQL and are never lost);
3. for every running execution, from its replayed state: a ``Begin`` trigger when
   it has only ExecutionStarted, and each pending task attempt's ``TaskMessage``
   again (engine.messages.follow_ups, as the relay: the handler gets the same
   idempotency key);
4. then the sentinel, last, so a recoverer dying midway leaves the work to the next.

Everything republished is idempotent downstream (decide ignores a second begin, a
second result of an attempt, a timer no longer pending), so work that moved on
between the replay and the publish costs only a duplicate run of a handler. Task
results, heartbeats and stop requests lost with Redis need nothing: a lost result
is replaced by running the still-pending attempt again; a stop is appended to
PostgreSQL directly.

The events streams are not re-fed: they are a feed of what PostgreSQL holds, the
projections catch up from PostgreSQL by their checkpoint (projections.runner),
and re-feeding history through the relay would also resend every begin and task
ever published. Consumers of the events streams of their own catch up through
the API's history after they see their group missing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable, Sequence
from uuid import UUID

import asyncpg

from engine.adapters.bus import Bus, PartlyPublished
from engine.adapters.postgres import session, translate_errors
from engine.adapters.store import StoredEvent
from engine.core import events as ev
from engine.loops.tracing import recorded_trace_context
from engine.messages import (
    DEFAULT_QUEUE,
    ENGINE_GROUP,
    WORKER_GROUP,
    TaskMessage,
    TriggerMessage,
    follow_ups,
)
from engine.service import EngineService, fold
from engine.stopping import sleep_or_stop

log = logging.getLogger("steplog.recovery")

# Advisory lock class of the recoverer (the ASCII of "stpC"); the key is hashtext(prefix).
RECOVERY_LOCK_CLASS = 0x73747043
TRY_LOCK = "SELECT pg_try_advisory_lock($1, hashtext($2))"
UNLOCK = "SELECT pg_advisory_unlock($1, hashtext($2))"
# The pauses between two tries to publish the rest of a publish Redis took in part.
PARTLY_BACKOFF_FIRST_S = 0.05
PARTLY_BACKOFF_MAX_S = 1.0


def pending_work(
    events: list[StoredEvent],
) -> tuple[list[tuple[UUID, TriggerMessage]], list[TaskMessage]]:
    """What an execution with these (all of its) events waits for from Redis: a begin
    trigger when it has only begun, and its pending task attempts. Nothing once ended."""
    if not events:
        return [], []
    state = fold(events[0].execution_id, events)
    if state.ended:
        return [], []
    wanted: list[StoredEvent] = []
    if state.seq == 1:
        wanted.append(events[0])
    pending = set(state.tasks)
    for stored in events:
        if stored.type == "TaskScheduled":
            scheduled = ev.decode_event(stored.data)
            if isinstance(scheduled, ev.TaskScheduled) and scheduled.task_id in pending:
                wanted.append(stored)
    # The messages' spans join the execution's trace under its recorded context.
    trace = {events[0].execution_id: recorded_trace_context(events[0].data)}
    return follow_ups(wanted, trace)


class Recovery:
    """Watches the sentinel and rebuilds Redis from PostgreSQL; see the module docstring.

    ``pool`` lends a connection for the advisory lock while recovering.
    """

    def __init__(
        self,
        service: EngineService,
        bus: Bus,
        pool: asyncpg.Pool,
        *,
        check_interval_s: float = 1.0,
        batch_size: int = 200,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.service = service
        self.bus = bus
        self.pool = pool
        self.check_interval_s = check_interval_s
        self.batch_size = batch_size
        self.clock = clock
        self.recoveries = 0  # how many times this process rebuilt Redis

    async def run(self, stop: asyncio.Event) -> None:
        """Check the sentinel until ``stop`` is set; errors are logged and retried."""
        while not stop.is_set():
            try:
                if not await self.bus.is_intact():
                    await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("recovery check failed (%r); retrying", exc)
            await sleep_or_stop(stop, self.check_interval_s)

    async def recover(self) -> bool:
        """Rebuild Redis unless another process is doing it or it is intact again.
        Returns True when this call rebuilt it."""
        with translate_errors():
            return await self._recover_locked()

    async def _recover_locked(self) -> bool:
        async with session(self.pool) as conn:
            if not await conn.fetchval(TRY_LOCK, RECOVERY_LOCK_CLASS, self.bus.prefix):
                return False
            try:
                if await self.bus.is_intact():
                    return False
                await self._rebuild()
                return True
            finally:
                if not conn.is_closed():
                    await conn.fetchval(UNLOCK, RECOVERY_LOCK_CLASS, self.bus.prefix)

    async def _rebuild(self) -> None:
        started = self.clock()
        log.warning("Redis holds no steplog sentinel: rebuilding it from PostgreSQL")
        for stream in self.bus.triggers_streams():
            await self.bus.ensure_group(stream, ENGINE_GROUP)
        queues = {DEFAULT_QUEUE}
        rearmed = await self.service.store.rearm_timers()
        running = await self.service.store.running_executions()
        begins = tasks = 0
        for i in range(0, len(running), self.batch_size):
            triggers: list[tuple[UUID, TriggerMessage]] = []
            work: list[TaskMessage] = []
            for execution_id in running[i : i + self.batch_size]:
                t, w = pending_work(await self.service.store.load(execution_id))
                triggers += t
                work += w
            queues |= {task.queue for task in work}
            for queue in queues:
                await self.bus.ensure_group(self.bus.tasks_stream(queue), WORKER_GROUP)
            await self._publish(triggers, work)
            begins += len(triggers)
            tasks += len(work)
        await self.bus.mark_intact(f"{_whoami()} {started.isoformat()}")
        self.recoveries += 1
        log.warning(
            "Redis rebuilt: %d running executions, %d begin triggers, %d tasks, %d timers re-armed",
            len(running),
            begins,
            tasks,
            rearmed,
        )

    async def _publish(
        self, triggers: Sequence[tuple[UUID, TriggerMessage]], tasks: Sequence[TaskMessage]
    ) -> None:
        """Publish, and while Redis takes a publish in part (`PartlyPublished`, at the
        edge of its memory), publish the rest again, only the rest: each such try
        takes at least one stream whole, so this ends. Other failures are raised (the
        next check rebuilds again)."""
        delay = PARTLY_BACKOFF_FIRST_S
        while True:
            try:
                await self.bus.publish(triggers=triggers, tasks=tasks)
                return
            except PartlyPublished as exc:
                triggers, tasks = exc.triggers, exc.tasks
            await asyncio.sleep(delay)
            delay = min(delay * 2, PARTLY_BACKOFF_MAX_S)


def _whoami() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


__all__ = ["Recovery", "pending_work"]
