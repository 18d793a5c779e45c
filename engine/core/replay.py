"""Replay a recorded history through ``decide``: would the current engine record
the same events? (Invariant 3; the check to run before upgrading steplog.)

Pure: the caller loads the history and the compiled definition. The history's
triggers are not recorded, so they are rebuilt from the events they caused:

- the first decision after ExecutionStarted: ``Begin``;
- ``TaskSucceeded`` -> ``TaskCompleted`` with the recorded output;
  ``TaskFailed`` -> ``TaskErrored``; ``TaskResultIgnored`` -> a result for that
  task; ``TaskHeartbeatRecorded`` -> ``TaskHeartbeat``;
- ``ExecutionAborted`` -> ``StopRequested`` with its error and cause;
- an ``ExecutionFailed`` no other trigger reproduces -> ``FailRequested`` (the engine
  failed the execution on a trigger it could not decide or record);
- anything else (``WaitStateExited``, ``TaskTimedOut``, ``ExecutionTimedOut``,
  the re-run of a retried state) -> ``TimerFired`` of a pending timer: those of
  the event's frame first, then the rest, each in due order; the first whose
  decision reproduces the recorded events is the one that fired.

Each trigger's ``now`` is the recorded timestamp of the decision's first event
(the engine stamps every event of a decision with its trigger's time); random
numbers and ids come from (execution id, seq), so decide is deterministic.
A decision matches when its events equal the recorded ones that follow; when no
candidate matches, the first divergence of the candidate that matched the
longest prefix is reported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence

import msgspec

from engine.core import events as ev
from engine.core.asl.model import Definition
from engine.core.decide import EXECUTION_TIMEOUT_TIMER, Decision, decide, timer_key
from engine.core.state import ExecutionState, evolve, initial_state
from engine.core.timestamps import iso_millis
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

DecideFn = Callable[[Definition, ExecutionState, Trigger], Decision]


class Recorded(msgspec.Struct, frozen=True):
    """One event of a recorded history."""

    seq: int
    event: ev.Event
    timestamp: dt.datetime


class Divergence(msgspec.Struct, frozen=True):
    """The first place the replay differs: ``expected`` is the recorded event at
    ``seq`` (None past the end), ``got`` what decide produced there (None when it
    produced nothing more)."""

    seq: int
    expected: ev.Event | None
    got: ev.Event | None
    reason: str


class Verdict(msgspec.Struct, frozen=True):
    events: int
    decisions: int
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None


def verify_history(
    definition: Definition,
    execution_id: str,
    history: Sequence[Recorded],
    decide_fn: DecideFn = decide,
) -> Verdict:
    """Replay ``history`` (an execution's events in seq order) through ``decide_fn``."""
    if not history or not isinstance(history[0].event, ev.ExecutionStarted):
        first = history[0].event if history else None
        return Verdict(
            0, 0, Divergence(1, first, None, "history does not begin with ExecutionStarted")
        )
    state = evolve(initial_state(execution_id), history[0].event, iso_millis(history[0].timestamp))
    i, decisions = 1, 0
    while i < len(history):
        matched: Decision | None = None
        best: tuple[int, Trigger, list[ev.Event]] | None = None
        for trigger in candidate_triggers(state, history[i]):
            decision = decide_fn(definition, state, trigger)
            produced = decision.events
            k = _common_prefix(produced, history[i:])
            if produced and k == len(produced):
                matched = decision
                break
            if best is None or k > best[0]:
                best = (k, trigger, produced)
        if matched is None:
            return Verdict(i, decisions, _divergence(history, i, best))
        state = matched.state
        i += len(matched.events)
        decisions += 1
    return Verdict(len(history), decisions)


def _common_prefix(produced: Sequence[ev.Event], recorded: Sequence[Recorded]) -> int:
    k = 0
    while k < len(produced) and k < len(recorded) and produced[k] == recorded[k].event:
        k += 1
    return k


def _divergence(
    history: Sequence[Recorded], i: int, best: tuple[int, Trigger, list[ev.Event]] | None
) -> Divergence:
    seq = history[i].seq
    if best is None:
        return Divergence(seq, history[i].event, None, "no trigger could have caused this event")
    k, trigger, produced = best
    expected = history[i + k].event if i + k < len(history) else None
    got = produced[k] if k < len(produced) else None
    kind = type(trigger).__name__
    if got is None:
        reason = f"{kind} produced {len(produced)} events; the history has more"
    elif expected is None:
        reason = f"{kind} produced events past the end of the history"
    else:
        reason = f"{kind} produced {ev.event_type(got)} where {ev.event_type(expected)} is recorded"
    return Divergence(seq + k, expected, got, reason)


def candidate_triggers(state: ExecutionState, first: Recorded) -> Iterator[Trigger]:
    """The triggers that could have caused a decision beginning with ``first``,
    most likely first."""
    now = first.timestamp
    event = first.event
    match event:
        case ev.ExecutionAborted():
            yield StopRequested(error=event.error, cause=event.cause, now=now)
            return
        case ev.TaskSucceeded():
            yield TaskCompleted(task_id=event.task_id, output=event.output, now=now)
            return
        case ev.TaskFailed():
            yield TaskErrored(task_id=event.task_id, error=event.error, cause=event.cause, now=now)
            return
        case ev.TaskResultIgnored():
            yield TaskCompleted(task_id=event.task_id, now=now)
            return
        case ev.TaskHeartbeatRecorded():
            yield TaskHeartbeat(task_id=event.task_id, now=now)
            return
        case ev.ExecutionTimedOut():
            yield TimerFired(
                timer_id=timer_key(state.execution_id, EXECUTION_TIMEOUT_TIMER), now=now
            )
            return
        case _:
            pass
    if state.seq == 1:
        yield Begin(now=now)
    frame = getattr(event, "frame", None)
    timers = sorted(state.timers.items(), key=lambda kv: (kv[1].due, kv[0]))
    # The event's own frame first: with many branches waiting, that is the one that woke.
    timers.sort(key=lambda kv: kv[1].frame != frame)
    for local_id, _ in timers:
        yield TimerFired(timer_id=timer_key(state.execution_id, local_id), now=now)
    if isinstance(event, ev.ExecutionFailed):
        # The engine failed the execution on a trigger it could not decide or record.
        yield FailRequested(error=event.error or "", cause=event.cause, now=now)
