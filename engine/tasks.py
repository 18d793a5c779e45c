"""Task callbacks and activities: the command side of the callback pattern (issue 12,
items 2 and 3). The API's `/v1/tasks/*` and `/v1/activities*` routes call `Tasks`.

Callbacks (`succeed`, `fail`, `heartbeat`) name a task attempt by its token
(engine.core.tasktokens). Each is decided and appended here, like a stop: load the
execution, decide the trigger (TaskCompleted, TaskErrored, TaskHeartbeat), append with
the expected seq (again on a conflict). So a 2xx means the outcome is committed in
PostgreSQL, not merely queued in Redis. The answers follow Step Functions:

- `InvalidToken` (400): not a token of steplog's form, not issued under the execution's
  key, or of an execution of another namespace (or of none);
- `TaskDoesNotExist` (404): a verified token whose seq is not the attempt's
  TaskScheduled (never issued by steplog: only a holder of the key could make one);
- `TaskTimedOut` (409): the attempt no longer waits: it timed out, was reported (a
  token used twice), was retried, or its execution ended.

Activities: registered per namespace (ActivityStore). A Task whose Resource is an
activity's ARN puts its attempt on the activity's queue stream (the relay publishes it
like any task); `poll` hands the oldest waiting attempt to one caller, through the
consumer group "workers" of that stream, so pollers on any number of API processes
share the work. An entry is acknowledged only when its result is committed (or its
attempt is found no longer pending), so an answer that never reached a worker, or a
worker that vanished, is handed out again once the entry has been idle for the
visibility timeout; a heartbeat resets that idle time. An entry handed out more than
``max_deliveries`` times fails its attempt with ``Steplog.TaskDeliveryExceeded`` and is
dead-lettered, as a built-in worker does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import os
import socket
from collections.abc import Callable
from typing import Any
from uuid import UUID

import msgspec

from engine.adapters.activities import Activity, ActivityStore
from engine.adapters.bus import Bus, Malformed, TaskDelivery
from engine.core import events as ev
from engine.core.tasktokens import ACTIVITY_QUEUE_PREFIX, activity_queue, parse_token
from engine.core.triggers import TaskCompleted, TaskErrored, TaskHeartbeat, Trigger
from engine.errors import (
    ActivityNotFound,
    BusError,
    ConcurrencyError,
    ExecutionNotFound,
    InvalidToken,
    MissingGroup,
    PayloadTooLarge,
    TaskDoesNotExist,
    TaskTimedOut,
    Unavailable,
)
from engine.messages import DELIVERY_EXCEEDED, WORKER_GROUP
from engine.service import EngineService

__all__ = ["Activity", "ActivityTask", "Tasks"]

log = logging.getLogger("steplog.tasks")

_INVALID = "the task token is not valid"
# The longest single XREADGROUP BLOCK of a poll (redis-py's default socket timeout is 5 s).
MAX_BLOCK_MS = 1000
_json = msgspec.json.Encoder()


class ActivityTask(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt handed to an activity worker."""

    task_token: str
    input: Any
    # Names the attempt like a built-in worker's TaskContext.idempotency_key: every
    # delivery of the attempt (a redelivery too) has the same one.
    idempotency_key: str
    execution_id: str
    state: str
    attempt: int
    deliveries: int


class Tasks:
    """Callbacks and activities over the engine service, the activities table and the
    bus; ``visibility_timeout_s`` and ``max_deliveries`` as for built-in workers."""

    def __init__(
        self,
        service: EngineService,
        activities: ActivityStore,
        bus: Bus,
        *,
        visibility_timeout_s: float = 30.0,
        max_deliveries: int = 10,
        consumer: str | None = None,
    ) -> None:
        self.service = service
        self.store = service.store
        self.activities = activities
        self.bus = bus
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.consumer = consumer or f"api-{socket.gethostname()}-{os.getpid()}"
        self._groups: set[str] = set()
        # Set at shutdown: waiting polls answer "no task" within a second instead of
        # holding the server's graceful shutdown for up to 60 s.
        self._closing = asyncio.Event()

    def end_polls(self) -> None:
        """Make every waiting poll (and every later one) return None within a second."""
        self._closing.set()

    # -- callbacks ------------------------------------------------------------------------

    async def succeed(
        self, namespace: str, token: str, output: Any, now: dt.datetime | None = None
    ) -> None:
        """SendTaskSuccess: the attempt succeeds with ``output`` (a decoded JSON value).
        ``now``: the service's clock (PostgreSQL's) unless given."""
        now = self.service.clock() if now is None else now
        size = len(_json.encode(output))
        if size > self.service.max_payload_bytes:
            raise PayloadTooLarge(
                f"output is {size} bytes; the limit is {self.service.max_payload_bytes}"
            )
        scheduled = await self._report(
            namespace, token, lambda task_id: TaskCompleted(task_id=task_id, output=output, now=now)
        )
        await self._release(scheduled)

    async def fail(
        self,
        namespace: str,
        token: str,
        error: str | None,
        cause: str | None,
        now: dt.datetime | None = None,
    ) -> None:
        """SendTaskFailure: the attempt fails with ``error`` (States.TaskFailed when absent,
        as decide names a failure without an error) and ``cause``."""
        now = self.service.clock() if now is None else now
        scheduled = await self._report(
            namespace,
            token,
            lambda task_id: TaskErrored(task_id=task_id, error=error, cause=cause, now=now),
        )
        await self._release(scheduled)

    async def heartbeat(self, namespace: str, token: str, now: dt.datetime | None = None) -> None:
        """SendTaskHeartbeat: the attempt's HeartbeatSeconds timer restarts (recorded as
        TaskHeartbeatRecorded; nothing is recorded for a Task without HeartbeatSeconds),
        and an activity's entry is kept from being handed out again."""
        now = self.service.clock() if now is None else now
        scheduled = await self._report(
            namespace, token, lambda task_id: TaskHeartbeat(task_id=task_id, now=now)
        )
        if scheduled.queue.startswith(ACTIVITY_QUEUE_PREFIX):
            try:
                entry_id = await self.bus.leased_entry(scheduled.queue, scheduled.task_id)
                if entry_id is not None:
                    stream = self.bus.tasks_stream(scheduled.queue)
                    await self.bus.touch(stream, WORKER_GROUP, self.consumer, [entry_id])
            except (Unavailable, BusError) as exc:
                # Committed already; at worst the task is handed out once more.
                log.warning("heartbeat of %s: cannot touch its entry: %r", scheduled.task_id, exc)

    async def _report(
        self, namespace: str, token: str, trigger_of: Callable[[str], Trigger]
    ) -> ev.TaskScheduled:
        """Verify ``token``, then decide and append ``trigger_of(task_id)`` while the
        attempt is pending. Returns the attempt's TaskScheduled."""
        execution_id, scheduled = await self._verify(namespace, token)
        for _ in range(20):
            state = await self.service.load_state(execution_id)
            if state.ended:
                raise TaskTimedOut(f"the task's execution has ended ({state.status})")
            if scheduled.task_id not in state.tasks:
                raise TaskTimedOut("the task is no longer waiting for this token")
            try:
                await self.service.apply(state, trigger_of(scheduled.task_id))
            except ConcurrencyError:
                continue
            return scheduled
        raise ConcurrencyError(f"execution {execution_id} kept changing while reporting a task")

    async def _verify(self, namespace: str, token: str) -> tuple[UUID, ev.TaskScheduled]:
        parsed = parse_token(token)
        if parsed is None:
            raise InvalidToken(_INVALID)
        execution_id = UUID(hex=parsed.execution_hex)
        if await self.store.get_execution(execution_id, namespace) is None:
            raise InvalidToken(_INVALID)
        first = await self.store.load(execution_id, upto_seq=1)
        started = ev.decode_event(first[0].data) if first else None
        if not isinstance(started, ev.ExecutionStarted) or not parsed.verify(
            started.task_token_key, str(execution_id)
        ):
            raise InvalidToken(_INVALID)
        seq = int(parsed.local_id)
        rows = await self.store.load(execution_id, after_seq=seq - 1, upto_seq=seq)
        scheduled = ev.decode_event(rows[0].data) if rows else None
        if not isinstance(scheduled, ev.TaskScheduled) or not hmac.compare_digest(
            scheduled.task_token, token
        ):
            raise TaskDoesNotExist("no task of this execution has this token")
        return execution_id, scheduled

    async def _release(self, scheduled: ev.TaskScheduled) -> None:
        """Acknowledge an activity's entry once its result is committed (best effort: an
        entry left behind is found no longer pending at its next hand-out)."""
        if not scheduled.queue.startswith(ACTIVITY_QUEUE_PREFIX):
            return
        try:
            await self.bus.release(scheduled.queue, WORKER_GROUP, scheduled.task_id)
        except (Unavailable, BusError) as exc:  # committed already: never a 5xx for this
            log.warning("cannot acknowledge task %s: %r", scheduled.task_id, exc)

    # -- activities -----------------------------------------------------------------------

    async def create_activity(self, namespace: str, name: str) -> tuple[Activity, bool]:
        return await self.activities.create(namespace, name)

    async def activity(self, namespace: str, name: str) -> Activity:
        found = await self.activities.get(namespace, name)
        if found is None:
            raise ActivityNotFound(f"no activity {name}")
        return found

    async def list_activities(self, namespace: str, after: str, limit: int) -> list[Activity]:
        return await self.activities.list(namespace, after, limit)

    async def delete_activity(self, namespace: str, name: str) -> None:
        """Forget the activity. Attempts already scheduled stay on its queue (they are
        handed out again if it is created anew, else they time out)."""
        if not await self.activities.delete(namespace, name):
            raise ActivityNotFound(f"no activity {name}")

    async def poll(
        self, namespace: str, name: str, worker_name: str, wait_s: float
    ) -> ActivityTask | None:
        """GetActivityTask: the next attempt of activity ``name``, waiting up to
        ``wait_s`` seconds for one; None when none came. `ActivityNotFound`."""
        await self.activity(namespace, name)
        queue = activity_queue(namespace, name)
        stream = self.bus.tasks_stream(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not self._closing.is_set():
            try:
                if stream not in self._groups:
                    await self.bus.ensure_group(stream, WORKER_GROUP)
                    self._groups.add(stream)
                deliveries = await self.bus.claim_tasks(
                    stream,
                    WORKER_GROUP,
                    self.consumer,
                    int(self.visibility_timeout_s * 1000),
                    count=1,
                )
                if not deliveries:
                    # Short blocks: an entry left by a vanished worker is claimed at the
                    # next turn, and no read outlasts the Redis client's socket timeout.
                    left_ms = int((deadline - loop.time()) * 1000)
                    block_ms = min(left_ms, MAX_BLOCK_MS, int(self.visibility_timeout_s * 500))
                    deliveries = await self.bus.read_tasks(
                        WORKER_GROUP, self.consumer, [stream], 1, block_ms if block_ms > 0 else None
                    )
            except MissingGroup:
                self._groups.discard(stream)  # Redis was flushed: make the group again
                continue
            for delivery in deliveries:
                task = await self._hand_out(queue, stream, delivery, worker_name)
                if task is not None:
                    return task
            if loop.time() >= deadline:
                return None
        return None

    async def _hand_out(
        self, queue: str, stream: str, delivery: TaskDelivery | Malformed, worker_name: str
    ) -> ActivityTask | None:
        if isinstance(delivery, Malformed):
            log.error("dropping malformed activity task %s: %s", delivery.entry.id, delivery.reason)
            await self.bus.dead_letter(delivery.entry, WORKER_GROUP, "malformed")
            return None
        task, entry = delivery.message, delivery.entry
        if entry.deliveries > self.max_deliveries:
            await self._give_up(queue, delivery)
            return None
        try:
            state = await self.service.load_state(task.execution_id)
        except ExecutionNotFound:
            state = None
        if state is None or state.ended or task.task_id not in state.tasks:
            await self.bus.ack(stream, WORKER_GROUP, [entry.id])
            await self.bus.forget_lease(queue, task.task_id)
            return None
        if await self._handed_out_elsewhere(queue, stream, task.task_id, entry.id):
            # A second entry of the same attempt (delivery is at least once: recovery
            # re-adding a task the relay published too): the first one stays the
            # attempt's, so it is not handed out twice at once and its deliveries count
            # toward max_deliveries instead of starting again from one.
            await self.bus.ack(stream, WORKER_GROUP, [entry.id])
            return None
        await self.bus.lease(queue, task.task_id, entry.id)
        log.info(
            "activity task %s of %s handed to %r (delivery %d)",
            task.task_id,
            task.execution_id,
            worker_name,
            entry.deliveries,
        )
        return ActivityTask(
            task_token=task.task_token,
            input=task.input,
            idempotency_key=f"{task.execution_id}:{task.state}:{task.attempt}:{task.task_id}",
            execution_id=str(task.execution_id),
            state=task.state,
            attempt=task.attempt,
            deliveries=entry.deliveries,
        )

    async def _handed_out_elsewhere(
        self, queue: str, stream: str, task_id: str, entry_id: str
    ) -> bool:
        """Whether the attempt ``task_id`` was handed out through another entry that is
        still pending (a lease naming an entry no longer pending, e.g. one trimmed or
        acknowledged before its lease was forgotten, does not count)."""
        leased = await self.bus.leased_entry(queue, task_id)
        if leased is None or leased == entry_id:
            return False
        return bool(await self.bus.delivery_counts(stream, WORKER_GROUP, [leased]))

    async def _give_up(self, queue: str, delivery: TaskDelivery) -> None:
        """Fail the attempt with DELIVERY_EXCEEDED, then dead-letter the entry (this order:
        a crash in between fails it twice, and the second is refused as not pending)."""
        task, entry = delivery.message, delivery.entry
        log.error(
            "activity task %s of %s handed out %d times; failing it",
            task.task_id,
            task.execution_id,
            entry.deliveries,
        )
        cause = (
            f"activity task {task.resource!r} was handed out {entry.deliveries} times without "
            f"a result (the limit is {self.max_deliveries})"
        )
        now = self.service.clock()
        for _ in range(20):
            try:
                state = await self.service.load_state(task.execution_id)
            except ExecutionNotFound:
                break
            if state.ended or task.task_id not in state.tasks:
                break
            try:
                await self.service.apply(
                    state,
                    TaskErrored(
                        task_id=task.task_id, error=DELIVERY_EXCEEDED, cause=cause, now=now
                    ),
                )
            except ConcurrencyError:
                continue
            break
        await self.bus.dead_letter(entry, WORKER_GROUP, "too many deliveries")
        await self.bus.forget_lease(queue, task.task_id)
