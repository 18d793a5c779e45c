"""Task HeartbeatSeconds: given a task with a heartbeat, when heartbeats (or none)
arrive, then its timer moves or the attempt fails with States.HeartbeatTimeout."""

from __future__ import annotations

from engine.core.decide import timer_key
from engine.core.triggers import TaskCompleted, TaskHeartbeat, TimerFired
from tests.unit.test_decide import (
    EXECUTION_ID,
    at,
    given,
    iso,
    one_task,
    pending_task,
    scheduled,
    types,
)


def heartbeat_timer(h) -> str:  # type: ignore[no-untyped-def]
    (timer,) = [t for t, info in h.state.timers.items() if info.purpose == "heartbeat"]
    return timer_key(EXECUTION_ID, timer)


def test_scheduling_a_task_with_heartbeat_seconds_sets_its_timer() -> None:
    h = given(one_task(HeartbeatSeconds=3, TimeoutSeconds=10))
    assert scheduled(h)[0].heartbeat_due == iso(at(3))
    assert {i.purpose for i in h.state.timers.values()} == {"task_timeout", "heartbeat"}


def test_no_heartbeat_in_time_fails_the_attempt_with_heartbeat_timeout() -> None:
    h = given(one_task(HeartbeatSeconds=3))
    then = h.when(TimerFired(timer_id=heartbeat_timer(h), now=at(3)))
    assert types(then.events) == ["TaskTimedOut", "ExecutionFailed"]
    assert h.state.error == "States.HeartbeatTimeout"


def test_a_heartbeat_moves_the_timer_and_the_old_one_is_stale() -> None:
    h = given(one_task(HeartbeatSeconds=3))
    old = heartbeat_timer(h)
    then = h.when(TaskHeartbeat(task_id=pending_task(h), now=at(2)))
    assert types(then.events) == ["TaskHeartbeatRecorded"]
    assert old in then.timers_to_cancel
    new = heartbeat_timer(h)
    assert [t.due for t in then.timers_to_set if t.timer_id == new] == [at(5)]
    stale = h.when(TimerFired(timer_id=old, now=at(3)))
    assert stale.events == [] and stale.ignored == "timer no longer pending"


def test_heartbeat_for_a_finished_task_is_ignored() -> None:
    h = given(one_task(HeartbeatSeconds=3))
    task_id = pending_task(h)
    h.when(TaskCompleted(task_id=task_id, output=1, now=at(1)))
    then = h.when(TaskHeartbeat(task_id=task_id, now=at(2)))
    assert then.events == [] and then.ignored is not None


def test_heartbeat_timeout_is_caught_by_its_name_but_not_by_task_failed() -> None:
    catch = [
        {"ErrorEquals": ["States.TaskFailed"], "Next": "Wrong"},
        {"ErrorEquals": ["States.HeartbeatTimeout"], "Next": "Right"},
    ]
    doc = {
        "StartAt": "Work",
        "States": {
            "Work": {
                "Type": "Task",
                "Resource": "test:echo",
                "HeartbeatSeconds": 1,
                "Catch": catch,
                "End": True,
            },
            "Wrong": {"Type": "Fail", "Error": "Wrong"},
            "Right": {"Type": "Succeed"},
        },
    }
    h = given(doc)
    h.when(TimerFired(timer_id=heartbeat_timer(h), now=at(1)))
    assert h.state.status == "SUCCEEDED"
