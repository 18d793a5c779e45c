"""When a state fails: Retry (a timer, then the state runs again), Catch (on to
the catcher's Next with the error output), or the frame fails and the failure
propagates to the enclosing Parallel or Map state, and finally the execution.
Also the error-handling rules of ASL: which Retrier or Catcher matches an error,
how long a retry waits, and when a Map has failed too often.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import StatesError
from engine.core.asl.jsonpath import set_result
from engine.core.asl.model import (
    Catcher,
    JsonataIO,
    MapState,
    ParallelState,
    Retrier,
    TaskState,
)
from engine.core.dataflow import assigned_variables, evaluate_jsonata, jsonata_states
from engine.core.decide.completion import Exited, map_progress
from engine.core.decide.decider import Decider, Enter, describe_exception
from engine.core.state import Frame
from engine.core.timestamps import iso_millis

# Errors no Retry or Catch handles: they end the execution.
_TERMINAL = frozenset({E.RUNTIME})
# Errors States.ALL does not match (a retrier or catcher must name them).
_NOT_MATCHED_BY_ALL = E.NOT_MATCHED_BY_ALL | {E.DATA_LIMIT_EXCEEDED}


def fail(
    d: Decider, frame_id: str, error: str | None, cause: str | None, *, state_failed: bool = False
) -> None:
    """The current state of ``frame_id`` failed: retry, catch, or fail the frame.

    ``state_failed``: a Map or Parallel state failed as a whole; AWS records
    MapStateFailed / ParallelStateFailed unless a retrier takes the error."""
    f = d.state.frames[frame_id]
    if f.current is None:
        frame_failed(d, frame_id, error, cause)
        return
    st = d.state_def(frame_id)
    if not isinstance(st, TaskState | ParallelState | MapState):
        # Only these kinds have Retry and Catch.
        frame_failed(d, frame_id, error, cause)
        return
    name = error or ""
    catcher: Catcher | None = None
    if name not in _TERMINAL:
        for index, retrier in enumerate(st.retry):
            if not matches(retrier.error_equals, name):
                continue
            attempts = f.retry_attempts[index] if index < len(f.retry_attempts) else 0
            if attempts < retrier.max_attempts:
                _schedule_retry(d, frame_id, st.name, index, retrier, attempts, name)
                return
            break
        catcher = next((c for c in st.catch if matches(c.error_equals, name)), None)
    if state_failed:
        failed = ev.MapStateFailed if isinstance(st, MapState) else ev.ParallelStateFailed
        d.emit(failed(frame=frame_id, name=st.name, error=error, cause=cause))
    if catcher is not None:
        _catch(d, frame_id, st, catcher, name, cause)
        return
    frame_failed(d, frame_id, error, cause)


def frame_failed(d: Decider, frame_id: str, error: str | None, cause: str | None) -> None:
    """A frame ended in failure (Fail state, or an error nothing caught): the
    execution fails, or the enclosing Parallel or Map state learns of it."""
    f = d.state.frames[frame_id]
    if f.parent is None:
        d.emit(ev.ExecutionFailed(error=error, cause=cause))
        return
    parent_id = f.parent
    parent = d.state.frames[parent_id]
    if parent.current is None or parent.status != "running":
        return
    st = d.machine_of(parent_id).states[parent.current]
    if isinstance(st, ParallelState):
        fail(d, parent_id, error or E.BRANCH_FAILED, cause, state_failed=True)
        return
    assert isinstance(st, MapState)
    d.emit(
        ev.MapIterationFailed(
            frame=parent_id, name=st.name, index=f.index, error=error, cause=cause
        )
    )
    parent = d.state.frames[parent_id]
    if tolerated(parent):
        map_progress(d, parent_id, st)
        return
    if parent.tolerated_failure_count is not None or (
        parent.tolerated_failure_percentage is not None
    ):
        fail(
            d,
            parent_id,
            E.EXCEED_TOLERATED_FAILURE_THRESHOLD,
            "The specified tolerated failure threshold was exceeded",
            state_failed=True,
        )
    else:
        fail(d, parent_id, error, cause, state_failed=True)


def _schedule_retry(
    d: Decider, frame_id: str, name: str, index: int, r: Retrier, attempts: int, error: str
) -> None:
    try:
        delay = retry_delay(r, attempts, f"{d.state.execution_id}:{d.state.seq}:jitter")
        due = d.now + dt.timedelta(seconds=delay)
    except OverflowError:
        # IntervalSeconds * BackoffRate^attempts with no MaxDelaySeconds grows past the
        # last representable time: the retry can never happen, so the state fails.
        cause = d.runtime_cause(
            frame_id,
            name,
            f"The state failed with {error} and its Retry #{index + 1} would wait longer "
            "before the next attempt than can be represented (set MaxDelaySeconds).",
        )
        frame_failed(d, frame_id, E.RUNTIME, cause)
        return
    d.emit(
        ev.StateRetryScheduled(
            frame=frame_id,
            name=name,
            error=error,
            retrier=index,
            attempt=attempts + 1,
            delay_seconds=delay,
            timer_id=d.next_local_id(),
            due=iso_millis(due),
        )
    )


def _catch(
    d: Decider,
    frame_id: str,
    st: TaskState | ParallelState | MapState,
    catcher: Catcher,
    error: str,
    cause: str | None,
) -> None:
    raw = d.state.frames[frame_id].state_input
    error_output: dict[str, Any] = {"Error": error, "Cause": cause if cause is not None else ""}
    if cause is None:
        error_output = {"Error": error}
    try:
        scope = d.scope(frame_id, st.name)
        if isinstance(st.io, JsonataIO):
            if catcher.output is not None:
                states = jsonata_states(scope, raw, error_output=error_output, has_error=True)
                out = evaluate_jsonata(catcher.output, states, scope)
            else:
                out = error_output
        else:
            out = set_result(raw, catcher.result_path, error_output)
        assigned = None
        if catcher.assign is not None:
            assigned = assigned_variables(
                catcher.assign,
                raw,
                None,
                scope,
                has_result=False,
                error_output=error_output,
                has_error=True,
            )
        exited: Exited
        match st:
            case TaskState():
                exited = ev.TaskStateExited
            case ParallelState():
                exited = ev.ParallelStateExited
            case MapState():
                exited = ev.MapStateExited
        d.emit(exited(frame=frame_id, name=st.name, output=out, assigned_variables=assigned))
        d.agenda.append(Enter(frame_id, catcher.next, out))
    except StatesError as err:
        frame_failed(d, frame_id, err.error, err.cause)
    except Exception as exc:  # not an ASL error: as in Decider.guard, deterministic
        frame_failed(
            d, frame_id, E.RUNTIME, d.runtime_cause(frame_id, st.name, describe_exception(exc))
        )


# --- the rules --------------------------------------------------------------------


def matches(error_equals: tuple[str, ...], error: str) -> bool:
    """Whether a Retrier's or Catcher's ErrorEquals matches ``error``: by name;
    States.ALL matches all but States.Runtime and States.DataLimitExceeded;
    States.TaskFailed matches itself and every error a task raised (names outside
    "States."), not the timeouts."""
    for name in error_equals:
        if name == error:
            return True
        if name == E.ALL and error not in _NOT_MATCHED_BY_ALL:
            return True
        if name == E.TASK_FAILED and error not in (E.TIMEOUT, E.RUNTIME, E.HEARTBEAT_TIMEOUT):
            if not error.startswith("States.") or error == E.TASK_FAILED:
                return True
    return False


def retry_delay(retrier: Retrier, attempts: int, seed: str) -> float:
    """Seconds before retry number ``attempts + 1``: IntervalSeconds * BackoffRate^attempts,
    capped by MaxDelaySeconds; FULL jitter draws uniformly below that from an rng seeded
    with ``seed`` (recorded positions), so replay draws the same delay."""
    try:
        delay = retrier.interval_seconds * (retrier.backoff_rate**attempts)
    except OverflowError:  # a float power past 1.8e308
        delay = math.inf
    if retrier.max_delay_seconds is not None:
        delay = min(delay, float(retrier.max_delay_seconds))
    if retrier.jitter == "FULL":
        delay = EvalEnv.seeded(seed).rng.uniform(0, delay)
    return delay


def tolerated(f: Frame) -> bool:
    """Whether a Map frame's failed iterations are still within ToleratedFailureCount
    and ToleratedFailurePercentage (a Map with neither tolerates none)."""
    if f.tolerated_failure_count is None and f.tolerated_failure_percentage is None:
        return False
    if f.tolerated_failure_count is not None and f.failed > f.tolerated_failure_count:
        return False
    if f.tolerated_failure_percentage is not None and f.items:
        if f.failed * 100.0 / len(f.items) > f.tolerated_failure_percentage:
            return False
    return True
