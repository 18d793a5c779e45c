"""engine.core.replay: a history recorded by decide verifies; one recorded by a changed
engine (or a changed definition) is flagged at its first differing event.

Histories are made here by driving decide like the runtime does: each decision's
events are recorded with its trigger's time; task results come back in reverse
order of scheduling (so parallel work interleaves); timers fire in due order.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.asl.model import Definition
from engine.core.decide import Decision, decide, timer_key
from engine.core.replay import Recorded, candidate_triggers, verify_history
from engine.core.state import ExecutionState, evolve, initial_state
from engine.core.triggers import (
    Begin,
    StopRequested,
    TaskCompleted,
    TaskErrored,
    TimerFired,
    Trigger,
)

EID = "00000000-0000-4000-8000-0000000000bb"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

WORKFLOW: dict[str, Any] = {
    "StartAt": "Both",
    "TimeoutSeconds": 3600,
    "States": {
        "Both": {
            "Type": "Parallel",
            "Branches": [
                {"StartAt": "L", "States": {"L": {"Type": "Task", "Resource": "ok", "End": True}}},
                {
                    "StartAt": "W",
                    "States": {
                        "W": {"Type": "Wait", "Seconds": 5, "Next": "R"},
                        "R": {"Type": "Task", "Resource": "ok", "End": True},
                    },
                },
            ],
            "Next": "Each",
        },
        "Each": {
            "Type": "Map",
            "ItemsPath": "$[0].items",
            "ItemProcessor": {
                "StartAt": "Item",
                "States": {"Item": {"Type": "Task", "Resource": "ok", "End": True}},
            },
            "Next": "Flaky",
        },
        "Flaky": {
            "Type": "Task",
            "Resource": "fail",
            "Retry": [{"ErrorEquals": ["Boom"], "IntervalSeconds": 2, "MaxAttempts": 2}],
            "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Done"}],
            "Next": "Done",
        },
        "Done": {"Type": "Pass", "Result": {"v": 1}, "End": True},
    },
}


def _record(
    history: list[Recorded], decision: Decision, now: dt.datetime
) -> list[ev.TaskScheduled]:
    scheduled = []
    for event in decision.events:
        history.append(Recorded(len(history) + 1, event, now))
        if isinstance(event, ev.TaskScheduled):
            scheduled.append(event)
    return scheduled


def run(doc: dict[str, Any], input: Any, stop_at: int | None = None) -> list[Recorded]:
    """Drive decide to the end like the runtime would; stop after ``stop_at`` decisions."""
    definition = compile_definition(doc)
    started = ev.ExecutionStarted(input=input, workflow="wf", version=1, name="n")
    history = [Recorded(1, started, T0)]
    state = evolve(initial_state(EID), started, "2026-01-01T00:00:00.000Z")
    pending: list[ev.TaskScheduled] = []
    now = T0
    trigger: Trigger = Begin(now=now)
    for step in range(200):
        decision = decide(definition, state, trigger)
        pending += _record(history, decision, trigger.now)
        state = decision.state
        if state.ended:
            break
        now += dt.timedelta(seconds=1)
        if stop_at is not None and step + 1 >= stop_at:
            trigger = StopRequested(error="Stop", cause="by test", now=now)
        elif pending:
            task = pending.pop()
            if task.resource == "fail":
                trigger = TaskErrored(task_id=task.task_id, error="Boom", cause="c", now=now)
            else:
                trigger = TaskCompleted(task_id=task.task_id, output=task.input, now=now)
        else:
            local, info = min(state.timers.items(), key=lambda kv: kv[1].due)
            due = dt.datetime.fromisoformat(info.due.replace("Z", "+00:00"))
            now = max(now, due)
            trigger = TimerFired(timer_id=timer_key(EID, local), now=now)
    return history


def test_a_recorded_history_verifies() -> None:
    history = run(WORKFLOW, {"items": [1, 2, 3]})
    assert isinstance(history[-1].event, ev.ExecutionSucceeded)

    verdict = verify_history(compile_definition(WORKFLOW), EID, history)

    assert verdict.ok and verdict.events == len(history)
    assert verdict.decisions > 10


def test_a_stopped_history_verifies() -> None:
    history = run(WORKFLOW, {"items": [1, 2]}, stop_at=3)
    assert isinstance(history[-1].event, ev.ExecutionAborted)

    assert verify_history(compile_definition(WORKFLOW), EID, history).ok


def test_a_history_from_a_changed_definition_is_flagged_at_its_first_difference() -> None:
    changed = msgspec.json.decode(msgspec.json.encode(WORKFLOW))
    changed["States"]["Done"]["Result"] = {"v": 2}
    history = run(changed, {"items": [1]})
    first_exit_of_done = next(
        r.seq for r in history if isinstance(r.event, ev.PassStateExited) and r.event.name == "Done"
    )

    verdict = verify_history(compile_definition(WORKFLOW), EID, history)

    assert verdict.divergence is not None
    assert verdict.divergence.seq == first_exit_of_done
    assert isinstance(verdict.divergence.got, ev.PassStateExited)
    assert verdict.divergence.got.output == {"v": 1}
    assert isinstance(verdict.divergence.expected, ev.PassStateExited)
    assert verdict.divergence.expected.output == {"v": 2}


def _dropping_retries(definition: Definition, state: ExecutionState, trigger: Trigger) -> Decision:
    """A deliberately changed engine: it never retries (records the catch at once)."""
    doc = msgspec.json.decode(msgspec.json.encode(WORKFLOW))
    del doc["States"]["Flaky"]["Retry"]
    return decide(compile_definition(doc), state, trigger)


def test_a_changed_decide_is_flagged() -> None:
    history = run(WORKFLOW, {"items": []})
    retry = next(r for r in history if isinstance(r.event, ev.StateRetryScheduled))

    verdict = verify_history(compile_definition(WORKFLOW), EID, history, _dropping_retries)

    assert verdict.divergence is not None
    assert verdict.divergence.seq == retry.seq
    assert verdict.divergence.expected == retry.event
    assert not isinstance(verdict.divergence.got, ev.StateRetryScheduled)


def test_a_missing_event_is_flagged() -> None:
    history = run(WORKFLOW, {"items": [1]})
    cut = next(i for i, r in enumerate(history) if isinstance(r.event, ev.TaskScheduled))
    gappy = [
        *history[:cut],
        *(msgspec.structs.replace(r, seq=r.seq - 1) for r in history[cut + 1 :]),
    ]

    verdict = verify_history(compile_definition(WORKFLOW), EID, gappy)

    assert verdict.divergence is not None and verdict.divergence.seq <= cut + 1


def test_a_history_must_begin_with_its_start() -> None:
    history = run(WORKFLOW, {"items": []})

    verdict = verify_history(compile_definition(WORKFLOW), EID, history[1:])

    assert verdict.divergence is not None and verdict.divergence.seq == 1


def test_timers_of_the_event_frame_are_tried_first() -> None:
    history = run(WORKFLOW, {"items": []})
    exit_index = next(i for i, r in enumerate(history) if isinstance(r.event, ev.WaitStateExited))
    state = initial_state(EID)
    for r in history[:exit_index]:
        state = evolve(state, r.event, "2026-01-01T00:00:00.000Z")

    first = next(iter(candidate_triggers(state, history[exit_index])))

    assert isinstance(first, TimerFired)
    local = first.timer_id.removeprefix(EID + ":")
    assert state.timers[local].frame == history[exit_index].event.frame  # type: ignore[union-attr]
