"""Invariants of the pure core, checked with hypothesis.

Invariant 3: folding the events decide produced through ``evolve`` from
``initial_state`` gives exactly the state decide returned, over random
definitions and inputs and over random orders of triggers (task results,
duplicates, timers, stale timers, stop). Also: seq counts the events with no
gap, and an ended execution absorbs every trigger.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.asl.model import Definition
from engine.core.decide import decide, timer_key
from engine.core.inmemory import TaskError, echo, run_in_memory
from engine.core.state import (
    ExecutionState,
    evolve,
    evolve_all,
    initial_state,
)
from engine.core.timestamps import parse_iso
from engine.core.triggers import (
    Begin,
    StopRequested,
    TaskCompleted,
    TaskErrored,
    TaskHeartbeat,
    TimerFired,
    Trigger,
)

EXECUTION_ID = "00000000-0000-4000-8000-0000000000bb"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fold(events: list[ev.Event], stamps: list[str]) -> ExecutionState:
    state = initial_state(EXECUTION_ID)
    for event, stamp in zip(events, stamps, strict=True):
        state = evolve(state, event, stamp)
    return state


# --- random definitions: chains of Pass / Choice / Task / Wait / Map ------------------


def _task(resource: str, draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"Type": "Task", "Resource": resource}
    if draw(st.booleans()):
        body["Retry"] = [
            {
                "ErrorEquals": ["States.ALL"],
                "IntervalSeconds": draw(st.integers(1, 3)),
                "MaxAttempts": draw(st.integers(0, 2)),
            }
        ]
    return body


@st.composite
def chains(draw: st.DrawFn) -> dict[str, Any]:
    kinds = draw(
        st.lists(
            st.sampled_from(["Pass", "Choice", "Task", "FlakyTask", "Wait", "Map"]),
            min_size=1,
            max_size=6,
        )
    )
    states: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        nxt = f"S{i + 1}" if i + 1 < len(kinds) else None
        body: dict[str, Any]
        if kind == "Pass":
            body = {"Type": "Pass", "Result": i, "ResultPath": f"$.r{i}"}
        elif kind == "Choice":
            threshold = draw(st.integers(0, 9))
            body = {
                "Type": "Choice",
                "Choices": [{"Variable": "$.v", "NumericGreaterThan": threshold, "Next": "Done"}],
                "Default": nxt or "Done",
            }
        elif kind == "Task":
            body = _task("test:echo", draw)
        elif kind == "FlakyTask":
            body = _task("test:flaky", draw)
            body["Catch"] = [{"ErrorEquals": ["States.ALL"], "Next": "Done"}]
        elif kind == "Wait":
            body = {"Type": "Wait", "Seconds": draw(st.integers(0, 5))}
        else:
            inner = draw(st.sampled_from(["test:echo", "pass"]))
            item: dict[str, Any] = (
                {"Type": "Pass", "End": True}
                if inner == "pass"
                else {"Type": "Task", "Resource": inner, "End": True}
            )
            body = {
                "Type": "Map",
                "ItemsPath": "$.items",
                "ResultPath": f"$.m{i}",
                "MaxConcurrency": draw(st.integers(0, 3)),
                "ItemProcessor": {"StartAt": f"I{i}", "States": {f"I{i}": item}},
            }
        if kind != "Choice":
            body.update({"Next": nxt} if nxt else {"End": True})
        states[f"S{i}"] = body
    if any(k in ("Choice", "FlakyTask") for k in kinds):
        states["Done"] = {"Type": "Succeed"}
    return {"StartAt": "S0", "States": states}


inputs = st.fixed_dictionaries(
    {"v": st.integers(0, 9), "items": st.lists(st.integers(0, 100), max_size=5)}
)


def flaky(value: Any) -> Any:
    if isinstance(value, dict) and value.get("v", 0) % 2:
        raise TaskError("Flaky", "odd v")
    return value


@settings(max_examples=150, deadline=None)
@given(doc=chains(), execution_input=inputs)
def test_replaying_the_events_gives_the_state_decide_returned(
    doc: dict[str, Any], execution_input: dict[str, Any]
) -> None:
    definition = compile_definition(doc)
    run = run_in_memory(
        definition,
        execution_input,
        handlers={"test:echo": echo, "test:flaky": flaky},
        execution_id=EXECUTION_ID,
    )
    assert run.state.ended
    assert run.state.seq == len(run.events)
    assert fold(run.events, run.timestamps) == run.state
    replayed = evolve_all(initial_state(EXECUTION_ID), zip(run.events, run.timestamps, strict=True))
    assert replayed == run.state


# --- random triggers against blocking definitions ------------------------------------

TIMEOUT_AND_RETRY = [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1, "MaxAttempts": 1}]
BLOCKING: list[dict[str, Any]] = [
    {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "End": True,
                "Branches": [
                    {
                        "StartAt": "A",
                        "States": {
                            "A": {
                                "Type": "Task",
                                "Resource": "test:echo",
                                "TimeoutSeconds": 5,
                                "Retry": TIMEOUT_AND_RETRY,
                                "End": True,
                            }
                        },
                    },
                    {
                        "StartAt": "W",
                        "States": {
                            "W": {"Type": "Wait", "Seconds": 3, "Next": "B"},
                            "B": {
                                "Type": "Task",
                                "Resource": "test:echo",
                                "HeartbeatSeconds": 2,
                                "TimeoutSeconds": 10,
                                "End": True,
                            },
                        },
                    },
                ],
            }
        },
    },
    {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "End": True,
                "MaxConcurrency": 2,
                "ToleratedFailureCount": 1,
                "Retry": TIMEOUT_AND_RETRY,
                "ItemProcessor": {
                    "StartAt": "T",
                    "States": {
                        "T": {
                            "Type": "Task",
                            "Resource": "test:echo",
                            "TimeoutSeconds": 4,
                            "End": True,
                        }
                    },
                },
            }
        },
    },
    {
        "StartAt": "T",
        "States": {
            "T": {
                "Type": "Task",
                "Resource": "test:echo",
                "TimeoutSeconds": 2,
                "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "W"}],
                "Next": "W",
            },
            "W": {"Type": "Wait", "Seconds": 1, "Next": "U"},
            "U": {"Type": "Task", "Resource": "test:echo", "End": True},
        },
    },
]


class Execution(RuleBasedStateMachine):
    """Draws triggers against one execution; checks the invariants after each."""

    definition: Definition

    def __init__(self) -> None:
        super().__init__()
        self.events: list[ev.Event] = []
        self.stamps: list[str] = []
        self.state = initial_state(EXECUTION_ID)
        self.clock = T0

    def apply(self, trigger: Trigger) -> None:
        ended = self.state.ended
        seq = self.state.seq
        decision = decide(self.definition, self.state, trigger)
        if ended:
            assert decision.events == [], "an ended execution absorbs every trigger"
            assert decision.ignored is not None
        self.events.extend(decision.events)
        self.stamps.extend([iso(trigger.now)] * len(decision.events))
        self.state = decision.state
        assert self.state.seq == seq + len(decision.events)

    def tick(self, seconds: int) -> dt.datetime:
        self.clock += dt.timedelta(seconds=seconds)
        return self.clock

    @initialize(doc=st.sampled_from(BLOCKING), items=st.lists(st.integers(), max_size=4))
    def begin(self, doc: dict[str, Any], items: list[int]) -> None:
        self.definition = compile_definition(doc)
        started = ev.ExecutionStarted(input=items, workflow="wf", version=1, name="n")
        self.events, self.stamps = [started], [iso(T0)]
        self.state = evolve(self.state, started, iso(T0))
        self.apply(Begin(now=T0))

    @precondition(lambda self: self.state.tasks)
    @rule(data=st.data(), output=st.integers(), seconds=st.integers(0, 3))
    def complete_task(self, data: st.DataObject, output: int, seconds: int) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.state.tasks)))
        self.apply(TaskCompleted(task_id=task_id, output=output, now=self.tick(seconds)))

    @precondition(lambda self: self.state.tasks)
    @rule(data=st.data(), error=st.sampled_from(["Boom", "States.TaskFailed"]))
    def fail_task(self, data: st.DataObject, error: str) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.state.tasks)))
        self.apply(TaskErrored(task_id=task_id, error=error, cause="c", now=self.tick(1)))

    @precondition(lambda self: any(isinstance(e, ev.TaskScheduled) for e in self.events))
    @rule(data=st.data())
    def repeat_a_result(self, data: st.DataObject) -> None:
        ids = [e.task_id for e in self.events if isinstance(e, ev.TaskScheduled)]
        task_id = data.draw(st.sampled_from(ids))
        self.apply(TaskCompleted(task_id=task_id, output=0, now=self.tick(0)))

    @precondition(lambda self: self.state.timers)
    @rule(data=st.data())
    def fire_timer(self, data: st.DataObject) -> None:
        local = data.draw(st.sampled_from(sorted(self.state.timers)))
        due = dt.datetime.fromisoformat(self.state.timers[local].due.replace("Z", "+00:00"))
        self.clock = max(self.clock, due)
        self.apply(TimerFired(timer_id=timer_key(EXECUTION_ID, local), now=self.clock))

    @rule(local=st.integers(1, 60).map(str))
    def fire_stale_timer(self, local: str) -> None:
        if local in self.state.timers:
            return
        before = len(self.events)
        self.apply(TimerFired(timer_id=timer_key(EXECUTION_ID, local), now=self.tick(1)))
        assert len(self.events) == before

    @precondition(lambda self: self.state.tasks)
    @rule(data=st.data(), seconds=st.integers(0, 2))
    def heartbeat(self, data: st.DataObject, seconds: int) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.state.tasks)))
        self.apply(TaskHeartbeat(task_id=task_id, now=self.tick(seconds)))

    @rule()
    def stop(self) -> None:
        self.apply(StopRequested(error="Stopped", now=self.tick(1)))

    @invariant()
    def fold_is_the_state(self) -> None:
        assert fold(self.events, self.stamps) == self.state

    @invariant()
    def folding_at_once_is_the_state(self) -> None:
        """evolve_all (the replay's fold), from the start and from a state part way."""
        pairs = list(zip(self.events, self.stamps, strict=True))
        assert evolve_all(initial_state(EXECUTION_ID), pairs) == self.state
        half = len(pairs) // 2
        assert evolve_all(fold(self.events[:half], self.stamps[:half]), pairs[half:]) == self.state
        # With payloads left as JSON text and times as datetimes until the end (a long replay).
        lazy = [ev.decode_event_lazy(ev.encode_event(e)) for e in self.events]
        times = [parse_iso(t) if t else t for t in self.stamps]
        lazily = zip(lazy, times, strict=True)
        assert evolve_all(initial_state(EXECUTION_ID), lazily, lazy=True) == self.state

    @invariant()
    def seq_counts_events_without_gaps(self) -> None:
        assert self.state.seq == len(self.events)

    @invariant()
    def ended_execution_has_no_pending_work(self) -> None:
        if self.state.ended:
            assert (self.state.tasks, self.state.timers) == ({}, {})


Execution.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestExecution = Execution.TestCase
