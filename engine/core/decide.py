"""``decide(definition, state, trigger) -> Decision``: the pure heart of the engine.

Given an execution's state and one trigger (begin, a task result, a timer, a
stop request), decide returns the events that follow, running through every
non-blocking state in one step until each thread of the execution waits on a
task or a timer, or the execution ends. Each event is folded into the working
state with ``evolve`` as soon as it is emitted, so the state decide acts on is
always exactly the fold of the events (invariant 3).

Pure: no I/O, no clock, no global randomness. ``now`` comes with the trigger;
random numbers and UUIDs come from an rng seeded with (execution id, seq).
A duplicate or late trigger is an outcome (``Decision.ignored``), not an error.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, assert_never

import msgspec

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import StatesError
from engine.core.asl.jsonata import type_error_cause
from engine.core.asl.jsonpath import apply_path, dump_json, java_str, set_result
from engine.core.asl.model import JSONATA, Catcher, Definition, Machine, Retrier, StateDef
from engine.core.dataflow import (
    Scope,
    assigned_variables,
    effective_input,
    evaluate_jsonata,
    jsonata_states,
    output_only,
    state_output,
)
from engine.core.retry import matches, retry_delay, tolerated
from engine.core.state import ExecutionState, child_frame_id, child_ids, evolve
from engine.core.state_fields import batch_items, map_number, path_value, positive_int, wait_due
from engine.core.timestamps import iso_millis, parse_iso
from engine.core.triggers import (
    Begin,
    StopRequested,
    TaskCompleted,
    TaskErrored,
    TaskHeartbeat,
    TimerFired,
    Trigger,
)

EXECUTION_TIMEOUT_TIMER = "execution-timeout"
# AWS's payload quota: a state's output, as UTF-8 JSON, is at most 256 KiB.
MAX_PAYLOAD_BYTES = 256 * 1024
# AWS's hard quota on an execution's history: 25,000 events.
MAX_HISTORY_EVENTS = 25_000
_json_bytes = msgspec.json.Encoder().encode
# How many iterations a Map runs at once when MaxConcurrency is 0 (or larger):
# AWS runs at most 40 inline iterations, and 10,000 child executions of a
# DISTRIBUTED Map, at a time.
INLINE_MAP_CONCURRENCY = 40
DISTRIBUTED_MAP_CONCURRENCY = 10_000


@dataclass(frozen=True, slots=True)
class TimerRequest:
    timer_id: str
    due: dt.datetime


@dataclass(slots=True)
class Decision:
    events: list[ev.Event]
    state: ExecutionState
    ignored: str | None = None
    timers_to_set: list[TimerRequest] = field(default_factory=list)
    timers_to_cancel: list[str] = field(default_factory=list)


def timer_key(execution_id: str, local_id: str) -> str:
    """Timer ids are unique across executions: the store keys timers by them."""
    return f"{execution_id}:{local_id}"


# --- entry point -----------------------------------------------------------------


def decide(definition: Definition, state: ExecutionState, trigger: Trigger) -> Decision:
    d = _Decider(definition, state, trigger.now)
    d.handle(trigger)
    d.run()
    return d.decision()


class _Failure(Exception):
    """A state failed with an ASL error; handled by Retry/Catch or propagated."""

    def __init__(self, error: str, cause: str | None, *, state_failed: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.cause = cause
        # A Map or Parallel state failed itself (AWS records MapStateFailed /
        # ParallelStateFailed unless a retrier takes the error).
        self.state_failed = state_failed


class _Decider:
    def __init__(self, definition: Definition, state: ExecutionState, now: dt.datetime) -> None:
        self.definition = definition
        self.state = state
        self.now = now
        self.now_iso = iso_millis(now)
        self.events: list[ev.Event] = []
        self.ignored: str | None = None
        self.timers_to_set: list[TimerRequest] = []
        self.timers_to_cancel: list[str] = []
        self.agenda: deque[Callable[[], None]] = deque()
        self._execution_context: tuple[dict[str, Any], dict[str, Any]] | None = None

    # -- bookkeeping ----------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        before = self.state.timers
        self.state = evolve(self.state, event, self.now_iso)
        self.events.append(event)
        after = self.state.timers
        for tid in before.keys() - after.keys():
            self.timers_to_cancel.append(timer_key(self.state.execution_id, tid))
        for tid in after.keys() - before.keys():
            due = parse_iso(after[tid].due)
            self.timers_to_set.append(TimerRequest(timer_key(self.state.execution_id, tid), due))

    def decision(self) -> Decision:
        # A timer both set and cancelled within one decision never reaches the store.
        set_ids = {t.timer_id for t in self.timers_to_set}
        cancel = [t for t in self.timers_to_cancel if t not in set_ids]
        cancelled = set(self.timers_to_cancel)
        to_set = [t for t in self.timers_to_set if t.timer_id not in cancelled]
        if self.state.ended and self.definition.timeout_seconds:
            cancel.append(timer_key(self.state.execution_id, EXECUTION_TIMEOUT_TIMER))
        return Decision(self.events, self.state, self.ignored, to_set, cancel)

    def ignore(self, reason: str) -> None:
        self.ignored = reason

    def run(self) -> None:
        while self.agenda and not self.state.ended:
            if self.state.seq >= MAX_HISTORY_EVENTS:
                # A loop of non-blocking states would otherwise never return (and grow
                # the history without bound); AWS fails an execution at this size too.
                self.agenda.clear()
                self.emit(
                    ev.ExecutionFailed(
                        error=E.RUNTIME,
                        cause=f"The execution reached the limit of {MAX_HISTORY_EVENTS} "
                        "history events.",
                    )
                )
                return
            self.agenda.popleft()()

    def next_local_id(self) -> str:
        """A timer or task id unique within the execution: the seq of the event
        that will carry it."""
        return str(self.state.seq + 1)

    # -- triggers ---------------------------------------------------------------

    def handle(self, trigger: Trigger) -> None:
        s = self.state
        if s.status != "RUNNING":
            self.ignore(f"execution is {s.status}")
            return
        match trigger:
            case Begin():
                root = s.frames.get("")
                if s.seq != 1 or root is None:
                    self.ignore("already begun")
                    return
                if self.definition.timeout_seconds:
                    started = parse_iso(s.started_at)
                    due = started + dt.timedelta(seconds=self.definition.timeout_seconds)
                    self.timers_to_set.append(
                        TimerRequest(timer_key(s.execution_id, EXECUTION_TIMEOUT_TIMER), due)
                    )
                machine = self.definition.machine
                self.agenda.append(lambda: self.enter("", machine.start_at, s.input))
            case TaskCompleted() | TaskErrored():
                frame_id = s.tasks.get(trigger.task_id)
                if frame_id is None:
                    if trigger.task_id in s.completed_tasks:
                        self.ignore("duplicate task result")
                    else:
                        self.ignore("task attempt is no longer pending")
                        self.emit(
                            ev.TaskResultIgnored(
                                task_id=trigger.task_id, reason="attempt no longer pending"
                            )
                        )
                    return
                name = self._current(frame_id)
                if isinstance(trigger, TaskCompleted):
                    self.emit(
                        ev.TaskSucceeded(
                            frame=frame_id,
                            name=name,
                            task_id=trigger.task_id,
                            output=trigger.output,
                        )
                    )
                    self.agenda.append(lambda: self.task_result(frame_id, trigger.output))
                else:
                    error = trigger.error or E.TASK_FAILED
                    self.emit(
                        ev.TaskFailed(
                            frame=frame_id,
                            name=name,
                            task_id=trigger.task_id,
                            error=trigger.error,
                            cause=trigger.cause,
                        )
                    )
                    self.agenda.append(lambda: self.fail(frame_id, error, trigger.cause))
            case TaskHeartbeat():
                self.heartbeat(trigger.task_id)
            case TimerFired():
                self.timer(trigger.timer_id)
            case StopRequested():
                self.emit(ev.ExecutionAborted(error=trigger.error, cause=trigger.cause))
            case _:
                assert_never(trigger)

    def timer(self, timer_id: str) -> None:
        s = self.state
        prefix = s.execution_id + ":"
        local = timer_id[len(prefix) :] if timer_id.startswith(prefix) else timer_id
        if local == EXECUTION_TIMEOUT_TIMER:
            if not self.definition.timeout_seconds:
                self.ignore("no execution timeout")
                return
            self.emit(
                ev.ExecutionTimedOut(
                    error=E.TIMEOUT, cause="The execution timed out (TimeoutSeconds)."
                )
            )
            return
        info = s.timers.get(local)
        if info is None:
            self.ignore("timer no longer pending")
            return
        frame_id = info.frame
        match info.purpose:
            case "wait":
                self.agenda.append(lambda: self.wait_over(frame_id))
            case "retry":
                self.agenda.append(lambda: self.execute(frame_id))
            case "task_timeout" | "heartbeat":
                f = s.frames[frame_id]
                assert f.task_id is not None
                error = E.TIMEOUT if info.purpose == "task_timeout" else E.HEARTBEAT_TIMEOUT
                self.emit(
                    ev.TaskTimedOut(
                        frame=frame_id,
                        name=self._current(frame_id),
                        task_id=f.task_id,
                        error=error,
                        cause=None,
                    )
                )
                self.agenda.append(lambda: self.fail(frame_id, error, None))
            case _:
                assert_never(info.purpose)

    # -- helpers ----------------------------------------------------------------

    def _current(self, frame_id: str) -> str:
        name = self.state.frames[frame_id].current
        assert name is not None
        return name

    def machine_of(self, frame_id: str) -> Machine:
        scope: list[tuple[str, int]] = []
        f = self.state.frames[frame_id]
        while f.parent is not None:
            assert f.parent_state is not None
            scope.append((f.parent_state, f.index))
            f = self.state.frames[f.parent]
        return self.definition.machine_at(tuple(reversed(scope)))

    def state_def(self, frame_id: str) -> StateDef:
        return self.machine_of(frame_id).states[self._current(frame_id)]

    def execution_context(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """$$.Execution and $$.StateMachine: the same for every state of a decision."""
        if self._execution_context is None:
            s = self.state
            express = s.state_machine_type == "EXPRESS"
            kind = "express" if express else "execution"
            execution: dict[str, Any] = {
                "Id": f"arn:steplog:states:{s.namespace}:{kind}:{s.workflow}:{s.execution_id}",
                "Input": s.input,
                "StartTime": s.started_at,
                "Name": s.name,
                "RoleArn": "arn:steplog:iam::role/steplog",
            }
            if not express:
                execution["RedriveCount"] = 0
            machine = {
                "Id": f"arn:steplog:states:{s.namespace}:stateMachine:{s.workflow}",
                "Name": s.workflow,
            }
            self._execution_context = (execution, machine)
        return self._execution_context

    def scope(self, frame_id: str, st: StateDef, extra: dict[str, Any] | None = None) -> Scope:
        s = self.state
        f = s.frames[frame_id]
        execution, machine = self.execution_context()
        state: dict[str, Any] = {"Name": st.name, "EnteredTime": f.entered_time or self.now_iso}
        retry_count = sum(f.retry_attempts)
        if retry_count:
            state["RetryCount"] = retry_count
        context: dict[str, Any] = {"Execution": execution, "StateMachine": machine, "State": state}
        if extra:
            context.update(extra)
        env = EvalEnv.seeded(f"{s.execution_id}:{s.seq}", self.variables(frame_id))
        return Scope(context, env)

    def variables(self, frame_id: str) -> dict[str, Any]:
        return self.state.frames[frame_id].variables

    def runtime_cause(self, frame_id: str, st: StateDef, cause: str) -> str:
        entered = self.state.frames[frame_id].entered_seq
        return (
            f"An error occurred while executing the state '{st.name}' "
            f"(entered at the event id #{entered}). {cause}"
        )

    def guard(self, frame_id: str, st: StateDef, work: Callable[[], None]) -> None:
        """Run a step of a state, turning ASL errors into the state's failure."""
        try:
            work()
        except _Failure as failure:
            self.fail(frame_id, failure.error, failure.cause, state_failed=failure.state_failed)
        except StatesError as err:
            cause = err.cause
            if err.error in _PREFIXED:
                cause = self.runtime_cause(frame_id, st, cause)
            self.fail(frame_id, err.error, cause)
        except RecursionError:
            # A value built by the workflow itself (an intrinsic, JSONata) nested deeper
            # than can be processed: the state fails, the engine does not.
            cause = self.runtime_cause(frame_id, st, "A JSON value is nested too deeply.")
            self.fail(frame_id, E.RUNTIME, cause)

    # -- entering and running states ------------------------------------------------

    def enter(self, frame_id: str, name: str, state_input: Any) -> None:
        st = self.machine_of(frame_id).states[name]
        if st.type == "Wait":
            self.enter_wait(frame_id, st, state_input)
            return
        self.emit(ev.ENTERED[st.type](frame=frame_id, name=name, input=state_input))
        self.execute(frame_id)

    def execute(self, frame_id: str) -> None:
        """Run the current state of a frame (on entry, and again on a retry)."""
        st = self.state_def(frame_id)
        self.guard(frame_id, st, lambda: self._execute(frame_id, st))

    def _execute(self, frame_id: str, st: StateDef) -> None:
        f = self.state.frames[frame_id]
        raw = f.state_input
        scope = self.scope(frame_id, st)
        match st.type:
            case "Pass":
                value = effective_input(st, raw, scope)
                if st.query_language == JSONATA:
                    out = state_output(st, raw, None, scope, default_to_input=True)
                    self.leave(frame_id, st, out, raw, None, scope, has_result=False)
                    return
                result = st.result if st.has_result else value
                out = state_output(st, raw, result, scope)
                self.leave(frame_id, st, out, raw, result, scope, has_result=True)
            case "Succeed":
                value = effective_input(st, raw, scope)
                out = output_only(st, value, scope)
                self.leave(frame_id, st, out, raw, None, scope, has_result=False)
            case "Fail":
                error, cause = self.fail_fields(st, raw, scope)
                self.frame_failed(frame_id, error, cause)
            case "Choice":
                self.choose(frame_id, st, raw, scope)
            case "Task":
                self.schedule_task(frame_id, st, raw, scope)
            case "Parallel":
                value = effective_input(st, raw, scope)
                self.emit(
                    ev.ParallelStateStarted(
                        frame=frame_id, name=st.name, branches=len(st.branches), branch_input=value
                    )
                )
                for i, branch in enumerate(st.branches):
                    child = child_frame_id(frame_id, st.name, i)
                    self.agenda.append(partial(self.enter, child, branch.start_at, value))
            case "Map":
                self.start_map(frame_id, st, raw, scope)
            case "Wait":
                # Only reached on a retry of a Wait, which ASL does not allow.
                raise StatesError(E.RUNTIME, "Wait states cannot be retried")
            case _:
                raise StatesError(E.RUNTIME, f"Unsupported state type {st.type}")

    def leave(
        self,
        frame_id: str,
        st: StateDef,
        output: Any,
        state_input: Any,
        result: Any,
        scope: Scope,
        *,
        has_result: bool,
        next_state: str | None = None,
    ) -> None:
        """Exit the current state with ``output`` and move on (Next) or end the frame."""
        if len(_json_bytes(output)) > MAX_PAYLOAD_BYTES:
            raise StatesError(
                E.DATA_LIMIT_EXCEEDED,
                f"The state/task '{st.name}' returned a result with a size exceeding "
                "the maximum number of bytes service limit.",
            )
        assigned = None
        if st.has_assign:
            assigned = assigned_variables(
                st.assign, st.query_language, state_input, result, scope, has_result=has_result
            )
        nxt = next_state if next_state is not None else st.next
        end = nxt is None
        self.emit(
            ev.EXITED[st.type](
                frame=frame_id, name=st.name, output=output, end=end, assigned_variables=assigned
            )
        )
        if end:
            self.frame_done(frame_id)
        else:
            assert nxt is not None
            self.agenda.append(lambda: self.enter(frame_id, nxt, output))

    def fail_fields(self, st: StateDef, raw: Any, scope: Scope) -> tuple[str, str | None]:
        if st.query_language == JSONATA:
            states = jsonata_states(scope, raw)
            error = evaluate_jsonata(st.error, states, scope) if st.error is not None else None
            cause = evaluate_jsonata(st.cause, states, scope) if st.cause is not None else None
        else:
            error = st.error.render(raw, scope.context, scope.env) if st.error else None
            cause = st.cause.render(raw, scope.context, scope.env) if st.cause else None
            if st.error_path is not None:
                error = st.error_path.render(raw, scope.context, scope.env)["v"]
            if st.cause_path is not None:
                cause = st.cause_path.render(raw, scope.context, scope.env)["v"]
        return (
            error if error is None or isinstance(error, str) else java_str(error),
            cause if cause is None or isinstance(cause, str) else java_str(cause),
        )  # type: ignore[return-value]

    # -- Choice -------------------------------------------------------------------

    def choose(self, frame_id: str, st: StateDef, raw: Any, scope: Scope) -> None:
        value = effective_input(st, raw, scope)
        for i, choice in enumerate(st.choices):
            if choice.rule is not None:
                matched = choice.rule.matches(value, scope.context, scope.variables)
            else:
                cond = st.choice_conditions[i]
                result = evaluate_jsonata(cond, jsonata_states(scope, raw), scope)
                if not isinstance(result, bool):
                    raise StatesError(
                        E.QUERY_EVALUATION_ERROR,
                        "The Condition field must evaluate to a boolean",
                    )
                matched = result
            if matched:
                if st.query_language == JSONATA:
                    if choice.has_output:
                        out = evaluate_jsonata(choice.output, jsonata_states(scope, raw), scope)
                    else:
                        out = output_only(st, raw, scope)
                else:
                    out = output_only(st, value, scope)
                assigned = None
                if choice.assign is not None:
                    assigned = assigned_variables(
                        choice.assign, st.query_language, raw, None, scope, has_result=False
                    )
                self.emit(
                    ev.ChoiceStateExited(
                        frame=frame_id, name=st.name, output=out, assigned_variables=assigned
                    )
                )
                self.agenda.append(partial(self.enter, frame_id, choice.next, out))
                return
        if st.default is not None:
            out = output_only(st, value if st.query_language != JSONATA else raw, scope)
            self.leave(frame_id, st, out, raw, None, scope, has_result=False, next_state=st.default)
            return
        raise _Failure(E.NO_CHOICE_MATCHED, "No Matches!")

    # -- Wait ---------------------------------------------------------------------

    def enter_wait(self, frame_id: str, st: StateDef, state_input: Any) -> None:
        f = self.state.frames[frame_id]
        # The due time is worked out before the Entered event so that the event can
        # carry the timer; an error here is raised after the event, as AWS records it.
        probe_seq = self.state.seq + 1
        try:
            scope = self.scope(frame_id, st)
            value = effective_input(st, state_input, scope)
            due = wait_due(st, value, state_input, scope, self.now)
            error: StatesError | None = None
        except StatesError as err:
            due, error = None, err
        del f
        if error is not None or due is None:
            self.emit(ev.WaitStateEntered(frame=frame_id, name=st.name, input=state_input))
            if error is not None:
                cause = error.cause
                if error.error in _PREFIXED:
                    cause = self.runtime_cause(frame_id, st, cause)
                self.fail(frame_id, error.error, cause)
            return
        timer_id = str(probe_seq)
        if due <= self.now:
            self.emit(ev.WaitStateEntered(frame=frame_id, name=st.name, input=state_input))
            self.wait_over(frame_id)
            return
        self.emit(
            ev.WaitStateEntered(
                frame=frame_id,
                name=st.name,
                input=state_input,
                timer_id=timer_id,
                due=iso_millis(due),
            )
        )

    def wait_over(self, frame_id: str) -> None:
        st = self.state_def(frame_id)
        f = self.state.frames[frame_id]

        def work() -> None:
            scope = self.scope(frame_id, st)
            value = effective_input(st, f.state_input, scope)
            out = output_only(st, value if st.query_language != JSONATA else f.state_input, scope)
            self.leave(frame_id, st, out, f.state_input, None, scope, has_result=False)

        self.guard(frame_id, st, work)

    # -- Task ---------------------------------------------------------------------

    def schedule_task(self, frame_id: str, st: StateDef, raw: Any, scope: Scope) -> None:
        value = effective_input(st, raw, scope)
        timeout = positive_int(st, st.timeout_seconds, "TimeoutSeconds", raw, scope)
        heartbeat = positive_int(st, st.heartbeat_seconds, "HeartbeatSeconds", raw, scope)
        local = self.next_local_id()
        task_id = f"{self.state.execution_id}:{local}"
        attempt = sum(self.state.frames[frame_id].retry_attempts)
        timer_id, due = "", ""
        if timeout:
            timer_id = f"{local}:timeout"
            due = iso_millis(self.now + dt.timedelta(seconds=timeout))
        heartbeat_timer_id, heartbeat_due = "", ""
        if heartbeat:
            heartbeat_timer_id = f"{local}:heartbeat"
            heartbeat_due = iso_millis(self.now + dt.timedelta(seconds=heartbeat))
        self.emit(
            ev.TaskScheduled(
                frame=frame_id,
                name=st.name,
                task_id=task_id,
                resource=st.resource,
                queue=_queue_of(st.resource),
                input=value,
                attempt=attempt,
                timeout_seconds=timeout,
                heartbeat_seconds=heartbeat,
                timeout_timer_id=timer_id,
                timeout_due=due,
                heartbeat_timer_id=heartbeat_timer_id,
                heartbeat_due=heartbeat_due,
            )
        )

    def heartbeat(self, task_id: str) -> None:
        s = self.state
        frame_id = s.tasks.get(task_id)
        if frame_id is None:
            self.ignore("heartbeat for a task attempt that is no longer pending")
            return
        f = s.frames[frame_id]
        info = s.timers.get(f.heartbeat_timer_id or "")
        if info is None:
            self.ignore("heartbeat for a task without HeartbeatSeconds")
            return
        st = self.state_def(frame_id)
        seconds = positive_int(
            st, st.heartbeat_seconds, "HeartbeatSeconds", f.state_input, self.scope(frame_id, st)
        )
        assert seconds is not None
        self.emit(
            ev.TaskHeartbeatRecorded(
                frame=frame_id,
                name=st.name,
                task_id=task_id,
                timer_id=f"{self.next_local_id()}:heartbeat",
                due=iso_millis(self.now + dt.timedelta(seconds=seconds)),
            )
        )

    def task_result(self, frame_id: str, result: Any) -> None:
        st = self.state_def(frame_id)
        f = self.state.frames[frame_id]

        def work() -> None:
            scope = self.scope(frame_id, st)
            out = state_output(st, f.state_input, result, scope)
            self.leave(frame_id, st, out, f.state_input, result, scope, has_result=True)

        self.guard(frame_id, st, work)

    # -- Map ----------------------------------------------------------------------

    def map_items(self, frame_id: str, st: StateDef, raw: Any, scope: Scope) -> tuple[Any, Any]:
        """The Map's effective input and its items; a JSONata Items failure fails
        the Map state itself (AWS records MapStateFailed)."""
        if st.query_language == JSONATA:
            try:
                if st.items is not None:
                    items = evaluate_jsonata(st.items, jsonata_states(scope, raw), scope)
                    if not isinstance(items, list):
                        cause = type_error_cause(st.items_text, "Items", "array", items)
                        raise StatesError(E.QUERY_EVALUATION_ERROR, cause)
                elif not isinstance(raw, list):
                    cause = f"Map state input must be an array but was: {dump_json(raw)}"
                    raise StatesError(E.QUERY_EVALUATION_ERROR, cause)
                else:
                    items = raw
            except StatesError as err:
                cause = err.cause
                if err.error in _PREFIXED:
                    cause = self.runtime_cause(frame_id, st, cause)
                raise _Failure(err.error, cause, state_failed=True) from None
            return raw, items
        value = apply_path(st.input_path, raw, scope.context, scope.variables)
        items = path_value(st.items_path, value, scope) if st.items_path is not None else value
        if not isinstance(items, list):
            path = st.items_path.text if st.items_path is not None else "$"
            raise StatesError(
                E.RUNTIME,
                f"Invalid path '{path}' : The ItemsPath field must point to a JSON array",
            )
        return value, items

    def start_map(self, frame_id: str, st: StateDef, raw: Any, scope: Scope) -> None:
        assert st.processor is not None
        value, items = self.map_items(frame_id, st, raw, scope)
        max_conc = map_number(st.max_concurrency, "MaxConcurrency", value, raw, scope)
        try:
            tol_count = map_number(
                st.tolerated_failure_count, "ToleratedFailureCount", value, raw, scope
            )
            tol_pct = map_number(
                st.tolerated_failure_percentage, "ToleratedFailurePercentage", value, raw, scope
            )
        except StatesError:
            # AWS checks the tolerated failure thresholds after the Map has started.
            self.emit(ev.MapStateStarted(frame=frame_id, name=st.name, mode=st.mode))
            raise
        if st.item_batcher is not None:
            items = batch_items(st.item_batcher, items)
        selected = []
        for index, item in enumerate(items):
            if st.has_item_selector:
                item_scope = self.scope(
                    frame_id, st, {"Map": {"Item": {"Index": index, "Value": item}}}
                )
                if st.query_language == JSONATA:
                    states = jsonata_states(item_scope, raw)
                    states["context"] = item_scope.context
                    selected.append(evaluate_jsonata(st.item_selector, states, item_scope))
                else:
                    selected.append(
                        st.item_selector.render(value, item_scope.context, item_scope.env)
                    )
            else:
                selected.append(item)
        self.emit(
            ev.MapStateStarted(
                frame=frame_id,
                name=st.name,
                length=len(selected),
                items=selected,
                max_concurrency=int(max_conc or 0),
                tolerated_failure_count=int(tol_count) if tol_count is not None else None,
                tolerated_failure_percentage=float(tol_pct) if tol_pct is not None else None,
                mode=st.mode,
            )
        )
        if not selected:
            self.emit(ev.MapStateSucceeded(frame=frame_id, name=st.name))
            self.composite_done(frame_id, st, [])
            return
        self.launch_iterations(frame_id, st)

    def launch_iterations(self, frame_id: str, st: StateDef) -> None:
        assert st.processor is not None
        proc = st.processor
        f = self.state.frames[frame_id]
        running = f.launched - f.finished
        cap = INLINE_MAP_CONCURRENCY if st.mode != "DISTRIBUTED" else DISTRIBUTED_MAP_CONCURRENCY
        limit = min(f.max_concurrency or cap, cap)
        while f.launched < len(f.items) and running < limit:
            index = f.launched
            self.emit(ev.MapIterationStarted(frame=frame_id, name=st.name, index=index))
            f = self.state.frames[frame_id]
            child = child_frame_id(frame_id, st.name, index)
            item = f.items[index]
            self.agenda.append(partial(self.enter, child, proc.start_at, item))
            running += 1

    # -- frames finishing ---------------------------------------------------------

    def frame_done(self, frame_id: str) -> None:
        f = self.state.frames[frame_id]
        if f.parent is None:
            self.emit(ev.ExecutionSucceeded(output=f.data))
            return
        parent_id = f.parent
        st = self.machine_of(parent_id).states[self._current(parent_id)]
        if st.type == "Map":
            self.emit(ev.MapIterationSucceeded(frame=parent_id, name=st.name, index=f.index))
            self.map_progress(parent_id, st)
            return
        parent = self.state.frames[parent_id]
        children = [self.state.frames[c] for c in child_ids(parent)]
        if all(c.status == "succeeded" for c in children):
            self.composite_done(parent_id, st, [c.data for c in children])

    def map_progress(self, frame_id: str, st: StateDef) -> None:
        f = self.state.frames[frame_id]
        if f.finished == len(f.items):
            self.emit(ev.MapStateSucceeded(frame=frame_id, name=st.name))
            self.composite_done(frame_id, st, list(self.state.frames[frame_id].data))
        else:
            self.launch_iterations(frame_id, st)

    def composite_done(self, frame_id: str, st: StateDef, results: list[Any]) -> None:
        f = self.state.frames[frame_id]

        def work() -> None:
            scope = self.scope(frame_id, st)
            out = state_output(st, f.state_input, results, scope)
            self.leave(frame_id, st, out, f.state_input, results, scope, has_result=True)

        self.guard(frame_id, st, work)

    def frame_failed(self, frame_id: str, error: str | None, cause: str | None) -> None:
        """A frame ended in failure (Fail state, or an error nothing caught)."""
        f = self.state.frames[frame_id]
        if f.parent is None:
            self.emit(ev.ExecutionFailed(error=error, cause=cause))
            return
        parent_id = f.parent
        parent = self.state.frames[parent_id]
        if parent.current is None or parent.status != "running":
            return
        st = self.machine_of(parent_id).states[parent.current]
        if st.type == "Parallel":
            self.fail(parent_id, error or E.BRANCH_FAILED, cause, state_failed=True)
            return
        self.emit(
            ev.MapIterationFailed(
                frame=parent_id, name=st.name, index=f.index, error=error, cause=cause
            )
        )
        parent = self.state.frames[parent_id]
        if tolerated(parent):
            self.map_progress(parent_id, st)
            return
        if parent.tolerated_failure_count is not None or (
            parent.tolerated_failure_percentage is not None
        ):
            self.fail(
                parent_id,
                E.EXCEED_TOLERATED_FAILURE_THRESHOLD,
                "The specified tolerated failure threshold was exceeded",
                state_failed=True,
            )
        else:
            self.fail(parent_id, error, cause, state_failed=True)

    # -- errors: Retry, Catch, propagate ----------------------------------------------

    def fail(
        self, frame_id: str, error: str | None, cause: str | None, *, state_failed: bool = False
    ) -> None:
        """The current state of ``frame_id`` failed: retry, catch, or fail the frame.

        ``state_failed``: a Map or Parallel state failed as a whole; AWS records
        MapStateFailed / ParallelStateFailed unless a retrier takes the error."""
        f = self.state.frames[frame_id]
        if f.current is None:
            self.frame_failed(frame_id, error, cause)
            return
        st = self.state_def(frame_id)
        name = error or ""
        catcher: Catcher | None = None
        if name not in _TERMINAL:
            for index, retrier in enumerate(st.retry):
                if not matches(retrier.error_equals, name):
                    continue
                attempts = f.retry_attempts[index] if index < len(f.retry_attempts) else 0
                if attempts < retrier.max_attempts:
                    self.schedule_retry(frame_id, st, index, retrier, attempts, name)
                    return
                break
            catcher = next((c for c in st.catch if matches(c.error_equals, name)), None)
        if state_failed:
            failed = ev.MapStateFailed if st.type == "Map" else ev.ParallelStateFailed
            self.emit(failed(frame=frame_id, name=st.name, error=error, cause=cause))
        if catcher is not None:
            self.catch(frame_id, st, catcher, name, cause)
            return
        self.frame_failed(frame_id, error, cause)

    def schedule_retry(
        self, frame_id: str, st: StateDef, index: int, r: Retrier, attempts: int, error: str
    ) -> None:
        delay = retry_delay(r, attempts, f"{self.state.execution_id}:{self.state.seq}:jitter")
        local = self.next_local_id()
        self.emit(
            ev.StateRetryScheduled(
                frame=frame_id,
                name=st.name,
                error=error,
                retrier=index,
                attempt=attempts + 1,
                delay_seconds=delay,
                timer_id=local,
                due=iso_millis(self.now + dt.timedelta(seconds=delay)),
            )
        )

    def catch(
        self, frame_id: str, st: StateDef, catcher: Catcher, error: str, cause: str | None
    ) -> None:
        f = self.state.frames[frame_id]
        raw = f.state_input
        error_output: dict[str, Any] = {"Error": error, "Cause": cause if cause is not None else ""}
        if cause is None:
            error_output = {"Error": error}

        def work() -> None:
            scope = self.scope(frame_id, st)
            if st.query_language == JSONATA:
                if catcher.has_output:
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
                    st.query_language,
                    raw,
                    None,
                    scope,
                    has_result=False,
                    error_output=error_output,
                    has_error=True,
                )
            exited = ev.EXITED.get(st.type)
            if exited is not None:
                self.emit(
                    exited(frame=frame_id, name=st.name, output=out, assigned_variables=assigned)
                )
            nxt = catcher.next
            self.agenda.append(lambda: self.enter(frame_id, nxt, out))

        try:
            work()
        except StatesError as err:
            self.frame_failed(frame_id, err.error, err.cause)


# Errors no Retry or Catch handles: they end the execution.
_TERMINAL = frozenset({E.RUNTIME})


# Errors whose cause AWS prefixes with the state and the event id it entered at.
_PREFIXED = frozenset({E.RUNTIME, E.QUERY_EVALUATION_ERROR})


def _queue_of(resource: str) -> str:
    """Every task goes to the "default" queue for now; routing resources to their
    own queues (and workers to them) is a deployment choice still to make."""
    return "default"
