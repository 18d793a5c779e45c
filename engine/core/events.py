"""The events of an execution: one frozen msgspec tagged union.

Each event's tag (the JSON field ``type``) is the Step Functions history type
name, and its fields are that event's details, so a steplog history reads like
an AWS one and can be compared with the recorded cases. Field names are
camelCase on the wire (``inputDetails``-style), snake_case in Python.

Engine fields ride along with defaults:
- ``frame``: which branch of the execution the event belongs to: "" is the top
  level, "P/1" branch 1 of Parallel state P, "M/3" iteration 3 of Map state M,
  nested with "/" ("P/0/M/2").
- timer ids and due times, task ids, retry bookkeeping.
A few events have no AWS counterpart (``StateRetryScheduled``,
``TaskResultIgnored``); they are listed in ``ENGINE_ONLY``. ``aws_history``
gives the history as AWS shows it: without those, and without the iterations
of a DISTRIBUTED Map (child executions on AWS).

Schema evolution: a new field gets a default; a field never changes type; a
changed meaning is a new event type.
"""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

import msgspec

SCHEMA_VERSION = 1


class _Event(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", rename="camel", omit_defaults=True
):
    pass


class _StateEvent(_Event, frozen=True, kw_only=True):
    frame: str = ""
    name: str


# Every event about one state (it has the state's ``name`` and ``frame``).
StateEvent = _StateEvent


class _Entered(_StateEvent, frozen=True, kw_only=True):
    input: Any = None


class _Exited(_StateEvent, frozen=True, kw_only=True):
    output: Any = None
    # True when the state ended its branch (End: true, Succeed) rather than moving on.
    end: bool = False
    # Variables set by the state's Assign (AWS records them as assignedVariables).
    assigned_variables: dict[str, Any] | None = None


# --- execution -----------------------------------------------------------------


class ExecutionStarted(_Event, frozen=True, kw_only=True):
    input: Any = None
    workflow: str = ""
    version: int = 0
    name: str = ""
    namespace: str = "default"
    # The identifiers of $$.Execution.Id, $$.StateMachine.Id and $$.Execution.RoleArn, in
    # AWS's form (engine.core.arns), made once at start. Empty in histories recorded
    # before they were: those keep the identifiers they had (arns.legacy_arns).
    role_arn: str = ""
    state_machine_arn: str = ""
    execution_arn: str = ""
    # "STANDARD" or "EXPRESS": the context object differs ($$.Execution.Id, RedriveCount).
    state_machine_type: str = "STANDARD"
    # The W3C traceparent of the request that started the execution (empty with tracing
    # off): every later span of the execution joins its trace, also a decision a timer
    # triggers hours later (engine.loops.tracing). Data only: the core never reads it.
    trace_context: str = ""
    # 128 random bits (hex) made once at start: the key of the execution's task tokens
    # (engine.core.tasktokens). Empty for executions started before task tokens.
    task_token_key: str = ""


class ExecutionSucceeded(_Event, frozen=True, kw_only=True):
    output: Any = None


class ExecutionFailed(_Event, frozen=True, kw_only=True):
    error: str | None = None
    cause: str | None = None


class ExecutionTimedOut(_Event, frozen=True, kw_only=True):
    error: str | None = "States.Timeout"
    cause: str | None = None


class ExecutionAborted(_Event, frozen=True, kw_only=True):
    error: str | None = None
    cause: str | None = None


# --- simple states -------------------------------------------------------------


class PassStateEntered(_Entered, frozen=True, kw_only=True):
    pass


class PassStateExited(_Exited, frozen=True, kw_only=True):
    pass


class ChoiceStateEntered(_Entered, frozen=True, kw_only=True):
    pass


class ChoiceStateExited(_Exited, frozen=True, kw_only=True):
    pass


class SucceedStateEntered(_Entered, frozen=True, kw_only=True):
    pass


class SucceedStateExited(_Exited, frozen=True, kw_only=True):
    end: bool = True


class FailStateEntered(_Entered, frozen=True, kw_only=True):
    pass


class WaitStateEntered(_Entered, frozen=True, kw_only=True):
    # Set when the wait was computed; empty when its input processing failed.
    timer_id: str = ""
    due: str = ""


class WaitStateExited(_Exited, frozen=True, kw_only=True):
    pass


# --- task ----------------------------------------------------------------------


class TaskStateEntered(_Entered, frozen=True, kw_only=True):
    pass


class TaskStateExited(_Exited, frozen=True, kw_only=True):
    pass


# The task queue a Task state's work goes to unless routed elsewhere.
DEFAULT_QUEUE = "default"


class TaskScheduled(_StateEvent, frozen=True, kw_only=True):
    """A task attempt was put on its queue. ``task_id`` is also the idempotency key
    handlers receive: it names (execution, state entry, attempt)."""

    task_id: str
    resource: str
    queue: str = DEFAULT_QUEUE
    input: Any = None
    attempt: int = 0
    timeout_seconds: int | None = None
    heartbeat_seconds: int | None = None
    timeout_timer_id: str = ""
    timeout_due: str = ""
    # HeartbeatSeconds: the attempt fails with States.HeartbeatTimeout unless the
    # worker reports a heartbeat before this timer; each heartbeat moves it.
    heartbeat_timer_id: str = ""
    heartbeat_due: str = ""
    # The attempt's task token ($$.Task.Token) when it waits for a callback (a
    # .waitForTaskToken resource or an activity); empty otherwise.
    task_token: str = ""


class TaskSucceeded(_StateEvent, frozen=True, kw_only=True):
    task_id: str
    output: Any = None


class TaskFailed(_StateEvent, frozen=True, kw_only=True):
    task_id: str
    error: str | None = None
    cause: str | None = None


class TaskTimedOut(_StateEvent, frozen=True, kw_only=True):
    task_id: str
    error: str | None = "States.Timeout"
    cause: str | None = None


class TaskHeartbeatRecorded(_StateEvent, frozen=True, kw_only=True):
    """A worker reported that a task attempt is alive; its heartbeat timer moves."""

    task_id: str
    timer_id: str
    due: str


class TaskResultIgnored(_Event, frozen=True, kw_only=True):
    """A task result arrived for an attempt that is no longer pending (timed out,
    retried, execution ended): recorded, never applied."""

    task_id: str
    reason: str


# --- retry ---------------------------------------------------------------------


class StateRetryScheduled(_StateEvent, frozen=True, kw_only=True):
    """A Retrier matched ``error``; the state runs again when the timer fires."""

    error: str
    retrier: int
    attempt: int  # attempts of this retrier so far, this one included
    delay_seconds: float
    timer_id: str
    due: str


# --- parallel ------------------------------------------------------------------


class ParallelStateEntered(_Entered, frozen=True, kw_only=True):
    pass


class ParallelStateStarted(_StateEvent, frozen=True, kw_only=True):
    branches: int = 0
    branch_input: Any = None


class ParallelStateFailed(_StateEvent, frozen=True, kw_only=True):
    error: str | None = None
    cause: str | None = None


class ParallelStateExited(_Exited, frozen=True, kw_only=True):
    pass


# --- map -----------------------------------------------------------------------


class MapStateEntered(_Entered, frozen=True, kw_only=True):
    pass


class MapStateStarted(_StateEvent, frozen=True, kw_only=True):
    length: int = 0
    # Each iteration's input (after ItemSelector), and how many may run at once.
    items: list[Any] = []
    max_concurrency: int = 0
    tolerated_failure_count: int | None = None
    tolerated_failure_percentage: float | None = None
    # ProcessorConfig.Mode: a "DISTRIBUTED" Map runs each iteration as a child
    # execution on AWS, so its iterations are not part of the parent's history.
    mode: str = "INLINE"


class MapIterationStarted(_StateEvent, frozen=True, kw_only=True):
    index: int


class MapIterationSucceeded(_StateEvent, frozen=True, kw_only=True):
    index: int


class MapIterationFailed(_StateEvent, frozen=True, kw_only=True):
    index: int
    error: str | None = None
    cause: str | None = None


class MapStateSucceeded(_StateEvent, frozen=True, kw_only=True):
    pass


class MapStateFailed(_StateEvent, frozen=True, kw_only=True):
    error: str | None = None
    cause: str | None = None


class MapStateExited(_Exited, frozen=True, kw_only=True):
    pass


Event = (
    ExecutionStarted
    | ExecutionSucceeded
    | ExecutionFailed
    | ExecutionTimedOut
    | ExecutionAborted
    | PassStateEntered
    | PassStateExited
    | ChoiceStateEntered
    | ChoiceStateExited
    | SucceedStateEntered
    | SucceedStateExited
    | FailStateEntered
    | WaitStateEntered
    | WaitStateExited
    | TaskStateEntered
    | TaskStateExited
    | TaskScheduled
    | TaskSucceeded
    | TaskFailed
    | TaskTimedOut
    | TaskResultIgnored
    | TaskHeartbeatRecorded
    | StateRetryScheduled
    | ParallelStateEntered
    | ParallelStateStarted
    | ParallelStateFailed
    | ParallelStateExited
    | MapStateEntered
    | MapStateStarted
    | MapIterationStarted
    | MapIterationSucceeded
    | MapIterationFailed
    | MapStateSucceeded
    | MapStateFailed
    | MapStateExited
)

TERMINAL = (ExecutionSucceeded, ExecutionFailed, ExecutionTimedOut, ExecutionAborted)
# Their tags, for code that sees stored rows rather than decoded events.
TERMINAL_EVENT_TYPES: tuple[str, ...] = tuple(t.__struct_config__.tag for t in TERMINAL)  # type: ignore[misc]
ENGINE_ONLY = frozenset({"StateRetryScheduled", "TaskResultIgnored", "TaskHeartbeatRecorded"})

# Constructors of the Entered / Exited event of each state type.
ENTERED: dict[str, Callable[..., Event]] = {
    "Pass": PassStateEntered,
    "Choice": ChoiceStateEntered,
    "Succeed": SucceedStateEntered,
    "Fail": FailStateEntered,
    "Wait": WaitStateEntered,
    "Task": TaskStateEntered,
    "Parallel": ParallelStateEntered,
    "Map": MapStateEntered,
}
EXITED: dict[str, Callable[..., Event]] = {
    "Pass": PassStateExited,
    "Choice": ChoiceStateExited,
    "Succeed": SucceedStateExited,
    "Wait": WaitStateExited,
    "Task": TaskStateExited,
    "Parallel": ParallelStateExited,
    "Map": MapStateExited,
}

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    return _decoder.decode(data)


def _with_raw_payloads(cls: type[_Event]) -> type[_Event]:
    """``cls`` with each payload field (typed ``Any``: an input, an output) read as
    ``msgspec.Raw``, the JSON text it holds (``null`` when absent): a subclass of the
    same tag, so it decodes from the same bytes and matches ``cls`` in a class pattern."""
    hints = typing.get_type_hints(cls)
    raw = [
        (f.name, msgspec.Raw, msgspec.field(default=_RAW_NULL, name=f.encode_name))
        for f in msgspec.structs.fields(cls)
        if hints[f.name] is Any
    ]
    if not raw:
        return cls
    return msgspec.defstruct(  # type: ignore[return-value]
        cls.__name__,
        raw,
        bases=(cls,),
        module=__name__,
        frozen=True,
        kw_only=True,
        tag=cls.__struct_config__.tag,
    )


_RAW_NULL = msgspec.Raw(b"null")
_lazy_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(
    typing.Union[tuple(_with_raw_payloads(c) for c in typing.get_args(Event))]  # noqa: UP007
)


def decode_event_lazy(data: bytes | str) -> Event:
    """The event with its payloads (inputs, outputs: the fields typed ``Any``) left as
    ``msgspec.Raw`` JSON text, not decoded: a replay folds thousands of events whose
    payloads are all replaced by later ones, and decoding them is most of its cost.
    Only for `engine.core.state.evolve_all` with ``lazy=True``, which decodes
    the few the state keeps."""
    return _lazy_decoder.decode(data)


def event_type(event: Event) -> str:
    return type(event).__name__


def aws_history(events: list[Event]) -> list[Event]:
    """The events AWS shows in the execution's own history: engine-only events
    are left out, and so are the iterations of a DISTRIBUTED Map (AWS records
    those in the child executions of its Map Run)."""
    child_prefixes: list[str] = []
    maps: set[tuple[str, str]] = set()
    shown: list[Event] = []
    for event in events:
        if event_type(event) in ENGINE_ONLY:
            continue
        if isinstance(event, MapStateStarted) and event.mode == "DISTRIBUTED":
            maps.add((event.frame, event.name))
            prefix = f"{event.frame}/{event.name}/" if event.frame else f"{event.name}/"
            if prefix not in child_prefixes:
                child_prefixes.append(prefix)
        if isinstance(event, _StateEvent):
            if isinstance(event, MapIterationStarted | MapIterationSucceeded | MapIterationFailed):
                if (event.frame, event.name) in maps:
                    continue
            frame = event.frame + "/"
            if any(frame.startswith(p) for p in child_prefixes):
                continue
        shown.append(event)
    return shown


def event_details(event: Event) -> dict[str, Any]:
    """The event as a JSON object without its ``type`` tag (the history's details)."""
    details: dict[str, Any] = msgspec.to_builtins(event)
    details.pop("type", None)
    return details


class CommittedEvent(Protocol):
    """An event as committed to the log: what the relay, the bus and the read side read
    of one (engine.adapters.store.StoredEvent is one). ``data`` is the event's JSON as
    stored; ``position`` its place in the global order."""

    @property
    def execution_id(self) -> UUID: ...
    @property
    def seq(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def timestamp(self) -> dt.datetime: ...
    @property
    def data(self) -> bytes: ...
