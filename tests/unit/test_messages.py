"""engine.messages: the one union of stream messages, what committed events call for,
and the decide trigger each trigger message stands for."""

from __future__ import annotations

import datetime as dt
from uuid import UUID, uuid4

import msgspec
import pytest

from engine import messages
from engine.core import events as ev
from engine.core import triggers

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class Committed(msgspec.Struct, frozen=True):
    execution_id: UUID
    seq: int
    type: str
    data: bytes


def scheduled(execution_id: UUID, seq: int, **fields: object) -> Committed:
    event = ev.TaskScheduled(name="Work", task_id=f"t{seq}", resource="test:echo", **fields)  # type: ignore[arg-type]
    return Committed(execution_id, seq, "TaskScheduled", ev.encode_event(event))


def test_every_message_round_trips_through_the_one_encoder_and_decoder() -> None:
    all_kinds: list[messages.Message] = [
        messages.Begin(),
        messages.TaskResult(task_id="t", ok=True, output={"a": [1, 2.5]}),
        messages.TaskResult(task_id="t", ok=False, error="E", cause="c"),
        messages.Heartbeat(task_id="t"),
        messages.TimerFired(timer_id="w"),
        messages.TaskMessage(
            execution_id=uuid4(), seq=3, task_id="t", state="S", resource="r", input=None
        ),
    ]
    for message in all_kinds:
        assert messages.decode(messages.encode(message)) == message
    assert messages.encode(messages.TimerFired(timer_id="w")) == b'{"kind":"timer","timer_id":"w"}'


def test_a_trigger_stream_takes_no_task_and_a_task_stream_no_trigger() -> None:
    task = messages.TaskMessage(execution_id=uuid4(), seq=1, task_id="t", state="S", resource="r")
    with pytest.raises(ValueError):
        messages.decode_trigger(messages.encode(task))
    with pytest.raises(ValueError):
        messages.decode_task(messages.encode(messages.Begin()))
    with pytest.raises(msgspec.DecodeError):
        messages.decode_trigger(b'{"kind":"stop"}')


def test_each_trigger_message_stands_for_its_decide_trigger() -> None:
    to = messages.to_trigger
    assert to(messages.Begin(), NOW) == triggers.Begin(now=NOW)
    assert to(messages.TaskResult(task_id="t", ok=True, output=1), NOW) == triggers.TaskCompleted(
        task_id="t", output=1, now=NOW
    )
    failed = messages.TaskResult(task_id="t", ok=False, error="E", cause="c")
    assert to(failed, NOW) == triggers.TaskErrored(task_id="t", error="E", cause="c", now=NOW)
    assert to(messages.Heartbeat(task_id="t"), NOW) == triggers.TaskHeartbeat(task_id="t", now=NOW)
    assert to(messages.TimerFired(timer_id="w"), NOW) == triggers.TimerFired(timer_id="w", now=NOW)


def test_committed_events_call_for_a_begin_and_their_tasks_in_order() -> None:
    a, b = uuid4(), uuid4()
    started = Committed(a, 1, "ExecutionStarted", ev.encode_event(ev.ExecutionStarted()))
    begins, tasks = messages.follow_ups(
        [started, scheduled(a, 3, queue="q1", attempt=1, input={"x": 1}), scheduled(b, 7)]
    )
    assert begins == [(a, messages.Begin())]
    assert tasks == [
        messages.TaskMessage(
            execution_id=a,
            seq=3,
            queue="q1",
            task_id="t3",
            state="Work",
            attempt=1,
            resource="test:echo",
            input={"x": 1},
        ),
        messages.TaskMessage(
            execution_id=b, seq=7, queue="default", task_id="t7", state="Work", resource="test:echo"
        ),
    ]


def test_a_start_committed_with_its_first_decision_calls_for_no_begin() -> None:
    """The API made the first decision in the start's commit (engine.service): its events
    follow the ExecutionStarted in the batch, and the engine has nothing to begin."""
    a, b = uuid4(), uuid4()
    started = [
        Committed(x, 1, "ExecutionStarted", ev.encode_event(ev.ExecutionStarted())) for x in (a, b)
    ]
    decided = Committed(a, 2, "TaskStateEntered", b"{}")
    begins, tasks = messages.follow_ups([started[0], decided, scheduled(a, 3), started[1]])
    assert begins == [(b, messages.Begin())]
    assert [(t.execution_id, t.seq) for t in tasks] == [(a, 3)]
    # A batch that ends between the start and its decision sends the Begin (ignored then).
    begins, _ = messages.follow_ups([started[0]])
    assert begins == [(a, messages.Begin())]


def test_a_task_scheduled_that_does_not_decode_sends_no_task() -> None:
    a = uuid4()
    broken = Committed(a, 2, "TaskScheduled", b'{"type":"TaskScheduled","queue":"q1"}')
    begins, tasks = messages.follow_ups([broken, scheduled(a, 3)])
    assert begins == [] and [(t.execution_id, t.seq) for t in tasks] == [(a, 3)]
