"""What each trigger does to a running execution: the first steps on the agenda
(or an ``ignored`` outcome for a duplicate or late trigger)."""

from __future__ import annotations

import datetime as dt
from typing import assert_never

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.decide.decider import (
    EXECUTION_TIMEOUT_TIMER,
    Decider,
    Enter,
    Execute,
    FailCurrent,
    TaskResult,
    TimerRequest,
    WaitOver,
    timer_key,
)
from engine.core.decide.task import heartbeat
from engine.core.timestamps import parse_iso
from engine.core.triggers import (
    Begin,
    FailRequested,
    StopRequested,
    TaskCompleted,
    TaskErrored,
    TaskHeartbeat,
    TimerFired,
    Trigger,
)


def handle(d: Decider, trigger: Trigger) -> None:
    s = d.state
    if s.status != "RUNNING":
        d.ignore(f"execution is {s.status}")
        return
    match trigger:
        case Begin():
            _begin(d)
        case TaskCompleted() | TaskErrored():
            _task_outcome(d, trigger)
        case TaskHeartbeat():
            heartbeat(d, trigger.task_id)
        case TimerFired():
            _timer(d, trigger.timer_id)
        case StopRequested():
            d.emit(ev.ExecutionAborted(error=trigger.error, cause=trigger.cause))
        case FailRequested():
            d.emit(ev.ExecutionFailed(error=trigger.error, cause=trigger.cause))
        case _:
            assert_never(trigger)


def _begin(d: Decider) -> None:
    s = d.state
    if s.seq != 1 or s.frames.get("") is None:
        d.ignore("already begun")
        return
    if d.definition.timeout_seconds:
        started = parse_iso(s.started_at)
        try:
            due = started + dt.timedelta(seconds=d.definition.timeout_seconds)
        except OverflowError:
            d.emit(
                ev.ExecutionFailed(
                    error=E.RUNTIME,
                    cause=f"The execution's TimeoutSeconds ({d.definition.timeout_seconds}) "
                    "puts its deadline after the latest time steplog can record "
                    "(9999-12-31T23:59:59Z).",
                )
            )
            return
        d.timers_to_set.append(
            TimerRequest(timer_key(s.execution_id, EXECUTION_TIMEOUT_TIMER), due)
        )
    d.agenda.append(Enter("", d.definition.machine.start_at, s.input))


def _task_outcome(d: Decider, trigger: TaskCompleted | TaskErrored) -> None:
    s = d.state
    frame_id = s.tasks.get(trigger.task_id)
    if frame_id is None:
        if trigger.task_id in s.completed_tasks:
            d.ignore("duplicate task result")
        else:
            d.ignore("task attempt is no longer pending")
            d.emit(
                ev.TaskResultIgnored(task_id=trigger.task_id, reason="attempt no longer pending")
            )
        return
    name = d.current(frame_id)
    if isinstance(trigger, TaskCompleted):
        d.emit(
            ev.TaskSucceeded(
                frame=frame_id, name=name, task_id=trigger.task_id, output=trigger.output
            )
        )
        d.agenda.append(TaskResult(frame_id, trigger.output))
        return
    d.emit(
        ev.TaskFailed(
            frame=frame_id,
            name=name,
            task_id=trigger.task_id,
            error=trigger.error,
            cause=trigger.cause,
        )
    )
    d.agenda.append(FailCurrent(frame_id, trigger.error or E.TASK_FAILED, trigger.cause))


def _timer(d: Decider, timer_id: str) -> None:
    s = d.state
    prefix = s.execution_id + ":"
    local = timer_id[len(prefix) :] if timer_id.startswith(prefix) else timer_id
    if local == EXECUTION_TIMEOUT_TIMER:
        if not d.definition.timeout_seconds:
            d.ignore("no execution timeout")
            return
        d.emit(
            ev.ExecutionTimedOut(error=E.TIMEOUT, cause="The execution timed out (TimeoutSeconds).")
        )
        return
    info = s.timers.get(local)
    if info is None:
        d.ignore("timer no longer pending")
        return
    frame_id = info.frame
    match info.purpose:
        case "wait":
            d.agenda.append(WaitOver(frame_id))
        case "retry":
            d.agenda.append(Execute(frame_id))
        case "task_timeout" | "heartbeat":
            f = s.frames[frame_id]
            assert f.task_id is not None
            error = E.TIMEOUT if info.purpose == "task_timeout" else E.HEARTBEAT_TIMEOUT
            d.emit(
                ev.TaskTimedOut(
                    frame=frame_id,
                    name=d.current(frame_id),
                    task_id=f.task_id,
                    error=error,
                    cause=None,
                )
            )
            d.agenda.append(FailCurrent(frame_id, error, None))
        case _:
            assert_never(info.purpose)
