"""The Task state: schedules a task attempt (with its timeout and heartbeat
timers), records heartbeats, and leaves with the task's result."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core import tasktokens
from engine.core.asl import errors as E
from engine.core.asl.errors import StatesError
from engine.core.asl.jsonpath import JsonPath
from engine.core.asl.model import NumberField, TaskState
from engine.core.dataflow import Scope, effective_input, positive_int, seconds_after, state_output
from engine.core.decide.completion import leave
from engine.core.decide.decider import Decider
from engine.core.timestamps import iso_millis


def execute(d: Decider, frame_id: str, st: TaskState, raw: Any, scope: Scope) -> None:
    local = d.next_local_id()
    task_id = f"{d.state.execution_id}:{local}"
    token = ""
    if tasktokens.needs_token(st.resource):
        if not d.state.task_token_key:
            # Histories started before task tokens have no key to make one with.
            raise StatesError(
                E.RUNTIME,
                "The execution started before steplog issued task tokens; "
                f"it cannot run the resource {st.resource!r}.",
            )
        token = tasktokens.make_token(d.state.task_token_key, d.state.execution_id, local)
        # $$.Task.Token: only in the context of a task that waits for a callback.
        scope.context["Task"] = {"Token": token}
    value = effective_input(st.io, raw, scope)
    timeout = positive_int(st.io, st.timeout_seconds, "TimeoutSeconds", raw, scope)
    heartbeat = positive_int(st.io, st.heartbeat_seconds, "HeartbeatSeconds", raw, scope)
    attempt = sum(d.state.frames[frame_id].retry_attempts)
    timer_id, due = "", ""
    if timeout:
        timer_id = f"{local}:timeout"
        due = iso_millis(seconds_after(d.now, timeout, _field(st.timeout_seconds, "Timeout")))
    heartbeat_timer_id, heartbeat_due = "", ""
    if heartbeat:
        heartbeat_timer_id = f"{local}:heartbeat"
        heartbeat_due = iso_millis(
            seconds_after(d.now, heartbeat, _field(st.heartbeat_seconds, "Heartbeat"))
        )
    d.emit(
        ev.TaskScheduled(
            frame=frame_id,
            name=st.name,
            task_id=task_id,
            resource=st.resource,
            queue=_queue_of(d.state.namespace, st.resource),
            input=value,
            attempt=attempt,
            timeout_seconds=timeout,
            heartbeat_seconds=heartbeat,
            timeout_timer_id=timer_id,
            timeout_due=due,
            heartbeat_timer_id=heartbeat_timer_id,
            heartbeat_due=heartbeat_due,
            task_token=token,
        )
    )


def heartbeat(d: Decider, task_id: str) -> None:
    """A worker reported that a task attempt is alive: its heartbeat timer restarts."""
    s = d.state
    frame_id = s.tasks.get(task_id)
    if frame_id is None:
        d.ignore("heartbeat for a task attempt that is no longer pending")
        return
    f = s.frames[frame_id]
    info = s.timers.get(f.heartbeat_timer_id or "")
    if info is None:
        d.ignore("heartbeat for a task without HeartbeatSeconds")
        return
    st = d.state_def(frame_id)
    assert isinstance(st, TaskState)
    scope = d.scope(frame_id, st.name)
    seconds = positive_int(st.io, st.heartbeat_seconds, "HeartbeatSeconds", f.state_input, scope)
    assert seconds is not None
    d.emit(
        ev.TaskHeartbeatRecorded(
            frame=frame_id,
            name=st.name,
            task_id=task_id,
            timer_id=f"{d.next_local_id()}:heartbeat",
            due=iso_millis(
                seconds_after(d.now, seconds, _field(st.heartbeat_seconds, "Heartbeat"))
            ),
        )
    )


def result(d: Decider, frame_id: str, result: Any) -> None:
    """The task attempt succeeded with ``result``: the Task state leaves."""
    st = d.state_def(frame_id)
    assert isinstance(st, TaskState)
    d.guard(frame_id, st.name, _leave_with, d, frame_id, st, result)


def _leave_with(d: Decider, frame_id: str, st: TaskState, result: Any) -> None:
    state_input = d.state.frames[frame_id].state_input
    scope = d.scope(frame_id, st.name)
    out = state_output(st.io, state_input, result, scope)
    leave(
        d,
        frame_id,
        st.name,
        st.io,
        ev.TaskStateExited,
        st.next,
        out,
        state_input,
        result,
        scope,
        has_result=True,
    )


def _field(spec: NumberField | None, kind: str) -> str:
    """The field a number came from, as AWS names it in causes: TimeoutSeconds or
    TimeoutSecondsPath, HeartbeatSeconds or HeartbeatSecondsPath."""
    return f"{kind}SecondsPath" if isinstance(spec, JsonPath) else f"{kind}Seconds"


def _queue_of(namespace: str, resource: str) -> str:
    """An activity's tasks go to the activity's own queue (its pollers, never a
    built-in worker); every other task to the default queue (routing resources to
    queues of their own is a deployment choice still to make)."""
    activity = tasktokens.activity_name(resource)
    if activity is not None:
        return tasktokens.activity_queue(namespace, activity)
    return ev.DEFAULT_QUEUE
