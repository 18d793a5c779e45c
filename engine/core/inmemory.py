"""Run an execution to its end in memory, through the pure core only.

No store, no bus, no clock: a simulated clock jumps straight to each timer's
due time and tasks are answered by plain functions. The conformance suite,
the core benchmarks and property tests use it; the runtime never does.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.core import events as ev
from engine.core.arns import DEFAULT_NAMESPACE, ArnScope, execution_arns
from engine.core.asl.model import Definition
from engine.core.decide import decide
from engine.core.state import ExecutionState, evolve, initial_state
from engine.core.timestamps import iso_millis
from engine.core.triggers import Begin, TaskCompleted, TaskErrored, TimerFired, Trigger


class TaskError(Exception):
    """Raised by an in-memory handler to fail its task with (error, cause)."""

    def __init__(self, error: str, cause: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.cause = cause


Handler = Callable[[Any], Any]


def echo(value: Any) -> Any:
    return value


def fail(value: Any) -> Any:
    body = value if isinstance(value, dict) else {}
    raise TaskError(str(body.get("error", "TaskFailed")), body.get("cause"))


DEFAULT_HANDLERS: dict[str, Handler] = {"test:echo": echo, "test:fail": fail}


@dataclass
class Run:
    state: ExecutionState
    events: list[ev.Event] = field(default_factory=list)
    timestamps: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def run_in_memory(
    definition: Definition,
    input: Any,
    *,
    handlers: dict[str, Handler] | None = None,
    execution_id: str = "00000000-0000-4000-8000-000000000000",
    name: str = "local",
    workflow: str = "local",
    start: dt.datetime | None = None,
    max_steps: int = 100_000,
    state_machine_type: str = "STANDARD",
) -> Run:
    handlers = DEFAULT_HANDLERS if handlers is None else handlers
    now = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    arns = execution_arns(
        ArnScope(),
        DEFAULT_NAMESPACE,
        workflow,
        name,
        execution_id,
        express=state_machine_type == "EXPRESS",
    )
    started = ev.ExecutionStarted(
        input=input,
        workflow=workflow,
        version=1,
        name=name,
        state_machine_type=state_machine_type,
        role_arn=arns.role,
        state_machine_arn=arns.state_machine,
        execution_arn=arns.execution,
        # In memory nothing is secret: a fixed key keeps the run reproducible.
        task_token_key="0" * 32,
    )
    iso = iso_millis(now)
    state = evolve(initial_state(execution_id), started, iso)
    run = Run(state=state, events=[started], timestamps=[iso])
    pending: list[tuple[dt.datetime, int, Trigger]] = []
    counter = 0

    def push(at: dt.datetime, trigger: Trigger) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(pending, (at, counter, trigger))

    push(now, Begin(now=now))
    steps = 0
    while pending and not run.state.ended and steps < max_steps:
        steps += 1
        at, _, trigger = heapq.heappop(pending)
        now = max(now, at)
        trigger = _at(trigger, now)
        decision = decide(definition, run.state, trigger)
        if decision.ignored:
            run.ignored.append(decision.ignored)
        run.state = decision.state
        stamp = iso_millis(now)
        run.events.extend(decision.events)
        run.timestamps.extend([stamp] * len(decision.events))
        for timer in decision.timers_to_set:
            push(max(timer.due, now), TimerFired(timer_id=timer.timer_id, now=timer.due))
        for event in decision.events:
            if isinstance(event, ev.TaskScheduled):
                push(now, _run_task(handlers, event, now))
    return run


def _at(trigger: Trigger, now: dt.datetime) -> Trigger:
    import msgspec

    return msgspec.structs.replace(trigger, now=now)


def _run_task(handlers: dict[str, Handler], event: ev.TaskScheduled, now: dt.datetime) -> Trigger:
    handler = handlers.get(event.resource)
    if handler is None:
        return TaskErrored(
            task_id=event.task_id,
            error="States.TaskFailed",
            cause=f"No handler registered for resource {event.resource}",
            now=now,
        )
    try:
        return TaskCompleted(task_id=event.task_id, output=handler(event.input), now=now)
    except TaskError as err:
        return TaskErrored(task_id=event.task_id, error=err.error, cause=err.cause, now=now)
