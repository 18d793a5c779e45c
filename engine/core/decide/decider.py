"""The working context of one decision: the state it acts on, the events it has
emitted so far, the timers to set and cancel, the agenda of steps still to run,
and what an evaluation inside a state may read ($$, variables).

Every module of the decide package works through a ``Decider``; none keeps
state of its own. The agenda holds plain records (``Enter``, ``Execute``, ...)
that ``engine.core.decide.dispatch`` runs in order.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from engine.core import events as ev
from engine.core.arns import ExecutionArns, legacy_arns
from engine.core.asl import errors as E
from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import StatesError
from engine.core.asl.model import Definition, Machine, State
from engine.core.dataflow import Scope
from engine.core.state import ExecutionState, evolve
from engine.core.timestamps import iso_millis, parse_iso

EXECUTION_TIMEOUT_TIMER = "execution-timeout"
# AWS's payload quota: a state's output, as UTF-8 JSON, is at most 256 KiB.
MAX_PAYLOAD_BYTES = 256 * 1024
# AWS's hard quota on an execution's history: 25,000 events.
MAX_HISTORY_EVENTS = 25_000
# Errors whose cause AWS prefixes with the state and the event id it entered at.
PREFIXED = frozenset({E.RUNTIME, E.QUERY_EVALUATION_ERROR})


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
    # ``events`` encoded (engine.core.events.encode_event), one for one: what the store
    # records. Encoding at emit makes a value no JSON can hold fail its state.
    encoded: list[bytes] = field(default_factory=list)


def timer_key(execution_id: str, local_id: str) -> str:
    """Timer ids are unique across executions: the store keys timers by them."""
    return f"{execution_id}:{local_id}"


# --- the agenda's steps ---------------------------------------------------------------


class Enter(NamedTuple):
    """Enter state ``name`` of a frame with ``state_input``."""

    frame_id: str
    name: str
    state_input: Any


class Execute(NamedTuple):
    """Run the current state of a frame again (a retry's timer fired)."""

    frame_id: str


class TaskResult(NamedTuple):
    frame_id: str
    result: Any


class WaitOver(NamedTuple):
    frame_id: str


class FailCurrent(NamedTuple):
    """The current state of a frame failed with an error (a task's failure or timeout)."""

    frame_id: str
    error: str | None
    cause: str | None


Step = Enter | Execute | TaskResult | WaitOver | FailCurrent


class StateFailure(Exception):
    """A state failed with an ASL error; handled by Retry/Catch or propagated."""

    def __init__(self, error: str, cause: str | None, *, state_failed: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.cause = cause
        # A Map or Parallel state failed itself (AWS records MapStateFailed /
        # ParallelStateFailed unless a retrier takes the error).
        self.state_failed = state_failed


class FailureHandler(Protocol):
    """What happens when the current state of a frame fails: Retry, Catch, or the
    frame fails (``engine.core.decide.failures.fail``)."""

    def __call__(
        self,
        d: Decider,
        frame_id: str,
        error: str | None,
        cause: str | None,
        *,
        state_failed: bool = False,
    ) -> None: ...


class Decider:
    def __init__(
        self,
        definition: Definition,
        state: ExecutionState,
        now: dt.datetime,
        on_failure: FailureHandler,
    ) -> None:
        self.definition = definition
        self.state = state
        self.now = now
        self.now_iso = iso_millis(now)
        self.events: list[ev.Event] = []
        self.encoded: list[bytes] = []
        self.ignored: str | None = None
        self.timers_to_set: list[TimerRequest] = []
        self.timers_to_cancel: list[str] = []
        self.agenda: deque[Step] = deque()
        self._on_failure = on_failure
        self._execution_context: tuple[dict[str, Any], dict[str, Any]] | None = None

    # -- bookkeeping ----------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        # Encoded first: a value the encoder refuses (a lone surrogate built by an
        # intrinsic) raises here, inside the state's guard, before anything changes.
        data = ev.encode_event(event)
        before = self.state.timers
        self.state = evolve(self.state, event, self.now_iso)
        self.events.append(event)
        self.encoded.append(data)
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
        return Decision(self.events, self.state, self.ignored, to_set, cancel, self.encoded)

    def ignore(self, reason: str) -> None:
        self.ignored = reason

    def next_local_id(self) -> str:
        """A timer or task id unique within the execution: the seq of the event
        that will carry it."""
        return str(self.state.seq + 1)

    def fail(
        self, frame_id: str, error: str | None, cause: str | None, *, state_failed: bool = False
    ) -> None:
        """The current state of ``frame_id`` failed: retry, catch, or fail the frame."""
        self._on_failure(self, frame_id, error, cause, state_failed=state_failed)

    # -- where a frame is ---------------------------------------------------------

    def current(self, frame_id: str) -> str:
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

    def state_def(self, frame_id: str) -> State:
        return self.machine_of(frame_id).states[self.current(frame_id)]

    # -- what evaluations read ------------------------------------------------------

    def execution_context(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """$$.Execution and $$.StateMachine: the same for every state of a decision.

        The ARNs are the ones ExecutionStarted recorded; a history recorded before
        they were gets the identifiers it had then (engine.core.arns.legacy_arns)."""
        if self._execution_context is None:
            s = self.state
            express = s.state_machine_type == "EXPRESS"
            if s.execution_arn:
                arns = ExecutionArns(
                    state_machine=s.state_machine_arn, execution=s.execution_arn, role=s.role_arn
                )
            else:
                arns = legacy_arns(s.namespace, s.workflow, s.execution_id, express=express)
            execution: dict[str, Any]
            if express and s.execution_arn:
                # AWS's key order for an express execution (it shows in States.JsonToString).
                execution = {
                    "Id": arns.execution,
                    "Input": s.input,
                    "Name": s.name,
                    "RoleArn": arns.role,
                    "StartTime": s.started_at,
                }
            else:
                execution = {
                    "Id": arns.execution,
                    "Input": s.input,
                    "StartTime": s.started_at,
                    "Name": s.name,
                    "RoleArn": arns.role,
                }
            if not express:
                execution["RedriveCount"] = 0
            machine = {"Id": arns.state_machine, "Name": s.workflow}
            self._execution_context = (execution, machine)
        return self._execution_context

    def scope(self, frame_id: str, name: str, extra: dict[str, Any] | None = None) -> Scope:
        s = self.state
        f = s.frames[frame_id]
        execution, machine = self.execution_context()
        state: dict[str, Any] = {"Name": name, "EnteredTime": f.entered_time or self.now_iso}
        retry_count = sum(f.retry_attempts)
        if retry_count:
            state["RetryCount"] = retry_count
        context: dict[str, Any] = {"Execution": execution, "StateMachine": machine, "State": state}
        if extra:
            context.update(extra)
        env = EvalEnv.seeded(f"{s.execution_id}:{s.seq}", f.variables)
        return Scope(context, env)

    def runtime_cause(self, frame_id: str, name: str, cause: str) -> str:
        entered = self.state.frames[frame_id].entered_seq
        return (
            f"An error occurred while executing the state '{name}' "
            f"(entered at the event id #{entered}). {cause}"
        )

    def fail_with(self, frame_id: str, name: str, err: StatesError) -> None:
        """Fail the current state with an ASL error, prefixing the cause as AWS does."""
        cause = err.cause
        if err.error in PREFIXED:
            cause = self.runtime_cause(frame_id, name, cause)
        self.fail(frame_id, err.error, cause)

    def guard(self, frame_id: str, name: str, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)``, a step of state ``name``, turning ASL errors into the
        state's failure."""
        try:
            work(*args)
        except StateFailure as failure:
            self.fail(frame_id, failure.error, failure.cause, state_failed=failure.state_failed)
        except StatesError as err:
            self.fail_with(frame_id, name, err)
        except Exception as exc:
            # Anything else raised while the state runs (a value nested too deeply, a
            # number or date out of range, a value of an unexpected type, a value no
            # JSON can hold, a bug) is as deterministic as an ASL error:
            # retrying the trigger would raise it again, so the state fails with
            # States.Runtime (which no Retry or Catch takes) instead of the engine
            # retrying forever.
            cause = self.runtime_cause(frame_id, name, describe_exception(exc))
            self.fail(frame_id, E.RUNTIME, cause)


# The longest exception message quoted in a cause.
_MAX_QUOTED = 500


def describe_exception(exc: BaseException) -> str:
    """A cause for an exception that is not an ASL error: what went wrong, in words a
    workflow author can act on, with the exception quoted (shortened, and with NUL and
    lone surrogates escaped: the cause is recorded in an event, which must store)."""
    if isinstance(exc, RecursionError):
        # A value built by the workflow itself (an intrinsic, JSONata) nested deeper
        # than can be processed.
        return "A JSON value is nested too deeply."
    detail = printable(f"{type(exc).__name__}: {exc}", _MAX_QUOTED)
    if isinstance(exc, OverflowError):
        return f"A number or a date is out of range ({detail})."
    if isinstance(exc, UnicodeError):
        return f"A string is not valid Unicode ({detail})."
    return f"The state could not be processed ({detail})."


def printable(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters, with NUL and lone surrogates (which
    PostgreSQL and UTF-8 refuse) written as escapes."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\u0000")
