"""The one place that knows every state kind: entering a state, running it (on
entry and again on a retry), and running the agenda's steps in order."""

from __future__ import annotations

from typing import Any, assert_never

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.errors import StatesError
from engine.core.asl.model import (
    ChoiceState,
    FailState,
    MapState,
    ParallelState,
    PassState,
    State,
    SucceedState,
    TaskState,
    WaitState,
)
from engine.core.decide.choice import execute as execute_choice
from engine.core.decide.decider import (
    MAX_HISTORY_EVENTS,
    Decider,
    Enter,
    Execute,
    FailCurrent,
    TaskResult,
    WaitOver,
)
from engine.core.decide.fail import execute as execute_fail
from engine.core.decide.map import execute as execute_map
from engine.core.decide.parallel import execute as execute_parallel
from engine.core.decide.pass_ import execute as execute_pass
from engine.core.decide.succeed import execute as execute_succeed
from engine.core.decide.task import execute as execute_task
from engine.core.decide.task import result as task_result
from engine.core.decide.wait import enter as enter_wait
from engine.core.decide.wait import over as wait_over


def run(d: Decider) -> None:
    """Run the agenda until it is empty or the execution has ended."""
    agenda = d.agenda
    while agenda and not d.state.ended:
        if d.state.seq >= MAX_HISTORY_EVENTS:
            # A loop of non-blocking states would otherwise never return (and grow
            # the history without bound); AWS fails an execution at this size too.
            agenda.clear()
            d.emit(
                ev.ExecutionFailed(
                    error=E.RUNTIME,
                    cause=f"The execution reached the limit of {MAX_HISTORY_EVENTS} "
                    "history events.",
                )
            )
            return
        step = agenda.popleft()
        match step:
            case Enter():
                enter(d, step.frame_id, step.name, step.state_input)
            case Execute():
                execute(d, step.frame_id)
            case TaskResult():
                task_result(d, step.frame_id, step.result)
            case WaitOver():
                wait_over(d, step.frame_id)
            case FailCurrent():
                d.fail(step.frame_id, step.error, step.cause)
            case _:
                assert_never(step)


def enter(d: Decider, frame_id: str, name: str, state_input: Any) -> None:
    st = d.machine_of(frame_id).states[name]
    entered: Any
    match st:
        case WaitState():
            enter_wait(d, frame_id, st, state_input)
            return
        case PassState():
            entered = ev.PassStateEntered
        case TaskState():
            entered = ev.TaskStateEntered
        case ChoiceState():
            entered = ev.ChoiceStateEntered
        case SucceedState():
            entered = ev.SucceedStateEntered
        case FailState():
            entered = ev.FailStateEntered
        case ParallelState():
            entered = ev.ParallelStateEntered
        case MapState():
            entered = ev.MapStateEntered
        case _:
            assert_never(st)
    d.emit(entered(frame=frame_id, name=name, input=state_input))
    d.guard(frame_id, name, _execute, d, frame_id, st)


def execute(d: Decider, frame_id: str) -> None:
    """Run the current state of a frame again (a retry)."""
    st = d.state_def(frame_id)
    d.guard(frame_id, st.name, _execute, d, frame_id, st)


def _execute(d: Decider, frame_id: str, st: State) -> None:
    raw = d.state.frames[frame_id].state_input
    scope = d.scope(frame_id, st.name)
    match st:
        case PassState():
            execute_pass(d, frame_id, st, raw, scope)
        case TaskState():
            execute_task(d, frame_id, st, raw, scope)
        case ChoiceState():
            execute_choice(d, frame_id, st, raw, scope)
        case SucceedState():
            execute_succeed(d, frame_id, st, raw, scope)
        case FailState():
            execute_fail(d, frame_id, st, raw, scope)
        case ParallelState():
            execute_parallel(d, frame_id, st, raw, scope)
        case MapState():
            execute_map(d, frame_id, st, raw, scope)
        case WaitState():
            # Only reached on a retry of a Wait, which ASL does not allow.
            raise StatesError(E.RUNTIME, "Wait states cannot be retried")
        case _:
            assert_never(st)
