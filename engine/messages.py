"""What travels between processes on the trigger and task streams.

One frozen msgspec tagged union (tag field ``kind``) holds every message:

    Begin          an execution was started: make its first decision
    TaskResult     a worker's outcome of one task attempt (ok with output, or error/cause)
    Heartbeat      a worker reports a task attempt still running
    TimerFired     a due timer fired
    TaskMessage    a task attempt for a worker (on its queue's task stream)

Trigger messages travel on the execution's partition trigger stream (the execution id
beside them, see engine.adapters.bus); a ``TaskMessage`` carries its execution id and
queue itself. No stop trigger travels: a stop is decided and appended by the API.

Here too: the consumer group and queue names, the one encoder and decoder, what a
trigger message asks of decide (`to_trigger`), and which messages committed events
call for (`follow_ups`, used by the relay and by recovery). This module imports only
engine.core: the bus and every loop import it, never each other.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any, assert_never
from uuid import UUID

import msgspec

from engine.core import events as ev
from engine.core import triggers

log = logging.getLogger(__name__)

# Consumer groups: engines share the trigger streams, workers their queue's task stream.
ENGINE_GROUP = "engine"
WORKER_GROUP = "workers"
DEFAULT_QUEUE = ev.DEFAULT_QUEUE
# The error of a task attempt delivered more than max_deliveries times without a result
# (a built-in worker's task, or an activity's): Retry and Catch can handle it.
DELIVERY_EXCEEDED = "Steplog.TaskDeliveryExceeded"


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", omit_defaults=True):
    # The W3C traceparent of the span that sent the message (engine.loops.tracing): the
    # receiver's span is its child, so one execution's spans form one trace across
    # processes. Empty with tracing off (and omitted then, like every default value).
    traceparent: str = ""


class Begin(_Message, frozen=True, kw_only=True, tag="begin"):
    """The execution's ExecutionStarted is committed: decide its first steps."""


class TaskResult(_Message, frozen=True, kw_only=True, tag="task_result"):
    """The outcome of one task attempt: ``output`` when ``ok``, else ``error``/``cause``."""

    task_id: str
    ok: bool
    output: Any = None
    error: str | None = None
    cause: str | None = None


class Heartbeat(_Message, frozen=True, kw_only=True, tag="heartbeat"):
    task_id: str


class TimerFired(_Message, frozen=True, kw_only=True, tag="timer"):
    timer_id: str


class TaskMessage(_Message, frozen=True, kw_only=True, tag="task"):
    """One task attempt, from its TaskScheduled event (``seq``): every field a worker
    needs to run the handler and to name the attempt (the idempotency key)."""

    execution_id: UUID
    seq: int
    queue: str = DEFAULT_QUEUE
    task_id: str
    state: str
    attempt: int = 0
    resource: str
    input: Any = None
    # When the attempt times out (the Task state's TimeoutSeconds; ISO 8601 UTC), empty
    # without one: past it a result is ignored, so a worker stops trying to report it.
    timeout_due: str = ""
    # The attempt's task token when it waits for a callback (a .waitForTaskToken
    # resource: the handler's return value is not its result; an activity: the token
    # the poller gets). Empty for an ordinary task.
    task_token: str = ""


TriggerMessage = Begin | TaskResult | Heartbeat | TimerFired
Message = TriggerMessage | TaskMessage

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    """Raises msgspec.DecodeError (ValidationError included) for anything else."""
    return _decoder.decode(data)


def decode_trigger(data: bytes) -> TriggerMessage:
    """A trigger message; ValueError for a task message, msgspec.DecodeError for bad JSON."""
    message = decode(data)
    if isinstance(message, TaskMessage):
        raise ValueError("a task message where a trigger was expected")
    return message


def decode_task(data: bytes) -> TaskMessage:
    """A task message; ValueError for a trigger message, msgspec.DecodeError for bad JSON."""
    message = decode(data)
    if not isinstance(message, TaskMessage):
        raise ValueError(f"a {type(message).__name__} message where a task was expected")
    return message


def to_trigger(message: TriggerMessage, now: dt.datetime) -> triggers.Trigger:
    """The decide trigger a trigger message stands for, read at ``now``."""
    match message:
        case Begin():
            return triggers.Begin(now=now)
        case TaskResult(ok=True):
            return triggers.TaskCompleted(task_id=message.task_id, output=message.output, now=now)
        case TaskResult():
            return triggers.TaskErrored(
                task_id=message.task_id, error=message.error, cause=message.cause, now=now
            )
        case Heartbeat():
            return triggers.TaskHeartbeat(task_id=message.task_id, now=now)
        case TimerFired():
            return triggers.TimerFired(timer_id=message.timer_id, now=now)
        case _:
            assert_never(message)


# --- the version 1 stream entries (before this module), read during an upgrade ------------

_V1_TRIGGERS: dict[str, type[TriggerMessage]] = {
    "begin": Begin,
    "task_result": TaskResult,
    "heartbeat": Heartbeat,
    "timer": TimerFired,
}


def upcast_v1_trigger(kind: str, body: bytes) -> TriggerMessage:
    """A version 1 trigger entry (``kind`` beside an untagged JSON ``body``) as a message.
    Raises ValueError for an unknown kind, msgspec.DecodeError for a bad body."""
    cls = _V1_TRIGGERS.get(kind)
    if cls is None:
        raise ValueError(f"unknown trigger kind {kind!r}")
    if cls is Begin:
        return Begin()  # its body (the start time) was never read
    return msgspec.json.decode(body, type=cls)


def upcast_v1_task(execution_id: UUID, seq: int, data: bytes) -> TaskMessage:
    """A version 1 task entry (the TaskScheduled event JSON as ``data``) as a message.
    Raises msgspec.DecodeError or ValueError when ``data`` is not a TaskScheduled event."""
    return _task_of(execution_id, seq, data)


# --- what committed events call for ---------------------------------------------------------


def _task_of(execution_id: UUID, seq: int, data: bytes, traceparent: str = "") -> TaskMessage:
    scheduled = ev.decode_event(data)
    if not isinstance(scheduled, ev.TaskScheduled):
        raise ValueError(f"a {ev.event_type(scheduled)} event where TaskScheduled was expected")
    return TaskMessage(
        execution_id=execution_id,
        seq=seq,
        queue=scheduled.queue or DEFAULT_QUEUE,
        task_id=scheduled.task_id,
        state=scheduled.name,
        attempt=scheduled.attempt,
        resource=scheduled.resource,
        input=scheduled.input,
        timeout_due=scheduled.timeout_due,
        task_token=scheduled.task_token,
        traceparent=traceparent,
    )


def follow_ups(
    events: Iterable[ev.CommittedEvent], traceparents: Mapping[UUID, str] | None = None
) -> tuple[list[tuple[UUID, TriggerMessage]], list[TaskMessage]]:
    """The triggers (with their execution ids) and tasks a batch of committed events
    calls for, in event order: a Begin for each ExecutionStarted whose first decision is
    not in the batch too, a TaskMessage for each TaskScheduled, each with its execution's
    entry of ``traceparents`` (the relay's publish span) when given. A TaskScheduled
    that does not decode (never written by decide) is logged and left out: no worker
    could run it.

    A start whose first decision was made with it (engine.service) commits that
    decision's events (seq 2 ...) with its ExecutionStarted, so they come in the same
    batch (unless the batch ends between them: the Begin is then sent, and the engine
    finds the execution begun and ignores it)."""
    events = list(events)
    begun = {event.execution_id for event in events if event.seq == 2}
    begins: list[tuple[UUID, TriggerMessage]] = []
    tasks: list[TaskMessage] = []
    parents = traceparents or {}
    for event in events:
        if event.type == "ExecutionStarted" and event.execution_id not in begun:
            begins.append(
                (event.execution_id, Begin(traceparent=parents.get(event.execution_id, "")))
            )
        elif event.type == "TaskScheduled":
            try:
                tasks.append(
                    _task_of(
                        event.execution_id,
                        event.seq,
                        event.data,
                        parents.get(event.execution_id, ""),
                    )
                )
            except (msgspec.DecodeError, ValueError) as exc:
                log.error(
                    "TaskScheduled %s/%d does not decode (%s); no task sent",
                    event.execution_id,
                    event.seq,
                    exc,
                )
    return begins, tasks
