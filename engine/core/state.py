"""ExecutionState and ``evolve(state, event) -> state``: the fold of an execution's events.

Pure and copy-on-write: ``evolve`` never mutates its argument; it copies the
top-level struct and the frames it changes (frames are shallow-copied, JSON
values are shared because nothing mutates them). Replaying an execution's
events through ``evolve`` from ``initial_state`` gives exactly the state the
engine acted on (invariant 3). ``evolve_all`` gives the same state for many events
at once, copying once instead of at every event (the replay path: engine.service.fold).

A *frame* is one thread of control: the top level ("") or one Parallel branch
or Map iteration. A frame runs one state at a time; a Parallel or Map state
owns child frames until it completes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, Literal, assert_never
from uuid import UUID

import msgspec

from engine.core import events as ev
from engine.core.timestamps import iso_millis, parse_iso

Status = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"]
FrameStatus = Literal["running", "succeeded", "failed"]
TimerPurpose = Literal["wait", "retry", "task_timeout", "heartbeat"]


class Frame(msgspec.Struct, kw_only=True):
    id: str
    parent: str | None = None
    parent_state: str | None = None
    index: int = 0
    status: FrameStatus = "running"
    # The state this frame is in (None before the first state and after the last).
    current: str | None = None
    state_input: Any = None
    entered_seq: int = 0
    # When the current state was entered (RFC 3339, milliseconds): $$.State.EnteredTime.
    entered_time: str = ""
    # The data the frame carries between states: last output, final output when done.
    data: Any = None
    error: str | None = None
    cause: str | None = None
    # Workflow variables visible in this frame (Assign); branches start with a copy.
    variables: dict[str, Any] = {}
    # Retry bookkeeping for the current state: attempts per retrier.
    retry_attempts: tuple[int, ...] = ()
    # Pending work of the current state.
    task_id: str | None = None
    timer_id: str | None = None
    # A task attempt's heartbeat timer (besides its timeout timer in ``timer_id``).
    heartbeat_timer_id: str | None = None
    # Composite (Parallel / Map) state in progress. Its child frames are
    # child_frame_id(id, current, i) for i < launched (see child_ids).
    items: tuple[Any, ...] = ()
    max_concurrency: int = 0
    launched: int = 0
    finished: int = 0
    failed: int = 0
    results: tuple[Any, ...] = ()
    tolerated_failure_count: int | None = None
    tolerated_failure_percentage: float | None = None


class TimerInfo(msgspec.Struct, frozen=True, kw_only=True):
    frame: str
    purpose: TimerPurpose
    due: str


class ExecutionState(msgspec.Struct, kw_only=True):
    execution_id: str = ""
    namespace: str = "default"
    workflow: str = ""
    version: int = 0
    name: str = ""
    state_machine_type: str = "STANDARD"
    # As recorded in ExecutionStarted; empty for histories older than AWS-shaped ARNs.
    role_arn: str = ""
    state_machine_arn: str = ""
    execution_arn: str = ""
    # The key of the execution's task tokens (engine.core.tasktokens), as recorded.
    task_token_key: str = ""
    status: Status = "PENDING"
    input: Any = None
    output: Any = None
    error: str | None = None
    cause: str | None = None
    seq: int = 0
    started_at: str = ""
    stopped_at: str = ""
    # The timestamp of the last event (RFC 3339, milliseconds): the next decision records
    # no earlier time (engine.service), so a history's times never go backwards.
    last_event_time: str = ""
    frames: dict[str, Frame] = {}
    # Pending task attempts: task id -> frame id.
    tasks: dict[str, str] = {}
    timers: dict[str, TimerInfo] = {}
    # Task results seen (applied or recorded as ignored), so duplicates are recognised.
    completed_tasks: frozenset[str] = frozenset()

    @property
    def ended(self) -> bool:
        return self.status not in ("PENDING", "RUNNING")


def initial_state(execution_id: UUID | str) -> ExecutionState:
    return ExecutionState(execution_id=str(execution_id))


def child_frame_id(frame: str, state: str, index: int) -> str:
    return f"{frame}/{state}/{index}" if frame else f"{state}/{index}"


def evolve(state: ExecutionState, event: ev.Event, timestamp: str = "") -> ExecutionState:
    """Return the state after ``event``. ``timestamp`` (RFC 3339) is the event's
    recorded time: the state keeps the last one, execution start and end read it."""
    s = msgspec.structs.replace(state, seq=state.seq + 1)
    _apply(s, event, timestamp, _frame, _complete)
    return s


# Events whose own time the state keeps beyond the last event's: entered times, start, end.
_STAMPED = (
    ev._Entered,
    ev.ExecutionStarted,
    ev.ExecutionSucceeded,
    ev.ExecutionFailed,
    ev.ExecutionTimedOut,
    ev.ExecutionAborted,
)


def evolve_all(
    state: ExecutionState,
    events: Iterable[tuple[ev.Event, str | dt.datetime]],
    *,
    lazy: bool = False,
) -> ExecutionState:
    """The state after ``events`` (each with its recorded time, RFC 3339 text or an aware
    datetime), exactly as evolving ``state`` by one event after the other gives, in time
    linear in the events: instead of copying the state, the frames it changes and its
    growing set of completed tasks at every event (what keeps `evolve` pure), this copies
    them once and changes that private copy in place (a replay of 10,000 events spent
    most of its time copying). ``state`` itself is left as it was. A time is turned
    into text only where the state keeps it (an entered state, the start, the end, and
    the last event's).

    ``lazy`` (a long replay: engine.service.fold): the events may carry their payloads
    as ``msgspec.Raw`` (`ev.decode_event_lazy`), and an entered state's time given as a
    datetime is kept as it is until the end; then the payloads and times the state
    keeps are decoded and turned into text (one pass over its frames)."""
    s = msgspec.structs.replace(
        state, frames={k: msgspec.structs.replace(f) for k, f in state.frames.items()}
    )
    done = set(state.completed_tasks)
    last: str | dt.datetime = ""

    def complete(s: ExecutionState, task_id: str) -> None:
        done.add(task_id)

    stamp: str | dt.datetime
    for event, when in events:
        s.seq += 1
        if when:
            last = when
            if not isinstance(event, _STAMPED):
                stamp = ""
            elif isinstance(when, str) or lazy:
                stamp = when
            else:
                stamp = iso_millis(when)
        else:
            stamp = ""
        _apply(s, event, stamp, _own_frame, complete)
    s.completed_tasks = frozenset(done)
    if last:
        s.last_event_time = last if isinstance(last, str) else iso_millis(last)
        if len(s.last_event_time) != 24:
            s.last_event_time = _millis(s.last_event_time)
    if lazy:
        _settle(s)
    return s


def _settle(s: ExecutionState) -> None:
    """Decode in place what a lazy `evolve_all` left in ``s`` (its own copy) as JSON text
    or a datetime: the execution's input and output, each frame's state input, data and
    results (a Map's results, and the data its success makes of them, hold its
    iterations' data), and each frame's entered time."""
    decode = msgspec.json.decode
    raw = msgspec.Raw
    if type(s.input) is raw:
        s.input = decode(s.input)
    if type(s.output) is raw:
        s.output = decode(s.output)
    for f in s.frames.values():
        if type(f.state_input) is raw:
            f.state_input = decode(f.state_input)
        data = f.data
        if type(data) is raw:
            f.data = decode(data)
        elif type(data) is list and any(type(v) is raw for v in data):
            f.data = [decode(v) if type(v) is raw else v for v in data]
        if any(type(v) is raw for v in f.results):
            f.results = tuple(decode(v) if type(v) is raw else v for v in f.results)
        entered: str | dt.datetime = f.entered_time
        if not isinstance(entered, str):
            f.entered_time = iso_millis(entered)


def _apply(
    s: ExecutionState,
    event: ev.Event,
    timestamp: str | dt.datetime,
    _frame: Callable[[ExecutionState, str], Frame],
    complete: Callable[[ExecutionState, str], None],
) -> None:
    """Change ``s`` (a copy the caller owns) by ``event``: `_frame` gives a frame of it
    to change (copied, or owned already), ``complete`` records a task's result seen."""
    if timestamp and isinstance(timestamp, str):
        s.last_event_time = timestamp if len(timestamp) == 24 else _millis(timestamp)
    match event:
        # Most frequent first: a class pattern is an isinstance test, tried in order;
        # a Wait state's entry and exit come before those of every other state.
        case ev.WaitStateEntered():
            f = _enter(s, event, timestamp, _frame)
            if event.timer_id:
                f.timer_id = event.timer_id
                s.timers = {
                    **s.timers,
                    event.timer_id: TimerInfo(frame=event.frame, purpose="wait", due=event.due),
                }
        case ev.WaitStateExited():
            f = _frame(s, event.frame)
            if f.timer_id is not None:
                s.timers = _without(s.timers, f.timer_id)
            _exit(s, event, _frame)
        case ev._Entered():  # every other state's
            _enter(s, event, timestamp, _frame)
        case ev._Exited():
            _exit(s, event, _frame)
        case ev.TaskScheduled():
            f = _frame(s, event.frame)
            if f.timer_id is not None:  # a retry's timer has fired
                s.timers = _without(s.timers, f.timer_id)
                f.timer_id = None
            f.task_id = event.task_id
            s.tasks = {**s.tasks, event.task_id: event.frame}
            if event.timeout_timer_id:
                f.timer_id = event.timeout_timer_id
                s.timers = {
                    **s.timers,
                    event.timeout_timer_id: TimerInfo(
                        frame=event.frame, purpose="task_timeout", due=event.timeout_due
                    ),
                }
            if event.heartbeat_timer_id:
                f.heartbeat_timer_id = event.heartbeat_timer_id
                s.timers = {
                    **s.timers,
                    event.heartbeat_timer_id: TimerInfo(
                        frame=event.frame, purpose="heartbeat", due=event.heartbeat_due
                    ),
                }
        case ev.TaskSucceeded() | ev.TaskFailed() | ev.TaskTimedOut():
            f = _frame(s, event.frame)
            f.task_id = None
            if f.timer_id is not None:
                s.timers = _without(s.timers, f.timer_id)
                f.timer_id = None
            if f.heartbeat_timer_id is not None:
                s.timers = _without(s.timers, f.heartbeat_timer_id)
                f.heartbeat_timer_id = None
            s.tasks = _without(s.tasks, event.task_id)
            if not isinstance(event, ev.TaskTimedOut):
                # A result that arrives after a timeout is late, not a duplicate.
                complete(s, event.task_id)
            if isinstance(event, ev.TaskSucceeded):
                f.data = event.output
        case ev.ExecutionStarted():
            s.status = "RUNNING"
            s.input = event.input
            s.workflow = event.workflow
            s.version = event.version
            s.name = event.name
            s.namespace = event.namespace
            s.state_machine_type = event.state_machine_type
            s.role_arn = event.role_arn
            s.state_machine_arn = event.state_machine_arn
            s.execution_arn = event.execution_arn
            s.task_token_key = event.task_token_key
            s.started_at = _millis(_text(timestamp))
            s.frames = {"": Frame(id="", data=event.input)}
        case ev.ExecutionSucceeded():
            _end(s, "SUCCEEDED", timestamp)
            s.output = event.output
        case ev.ExecutionFailed():
            _end(s, "FAILED", timestamp)
            s.error, s.cause = event.error, event.cause
        case ev.ExecutionTimedOut():
            _end(s, "TIMED_OUT", timestamp)
            s.error, s.cause = event.error, event.cause
        case ev.ExecutionAborted():
            _end(s, "ABORTED", timestamp)
            s.error, s.cause = event.error, event.cause
        case ev.TaskHeartbeatRecorded():
            f = _frame(s, event.frame)
            if f.heartbeat_timer_id is not None:
                s.timers = _without(s.timers, f.heartbeat_timer_id)
            f.heartbeat_timer_id = event.timer_id
            s.timers = {
                **s.timers,
                event.timer_id: TimerInfo(frame=event.frame, purpose="heartbeat", due=event.due),
            }
        case ev.TaskResultIgnored():
            complete(s, event.task_id)
        case ev.StateRetryScheduled():
            f = _frame(s, event.frame)
            attempts = list(f.retry_attempts) or []
            while len(attempts) <= event.retrier:
                attempts.append(0)
            attempts[event.retrier] = event.attempt
            f.retry_attempts = tuple(attempts)
            f.timer_id = event.timer_id
            _drop_children(s, f)
            s.timers = {
                **s.timers,
                event.timer_id: TimerInfo(frame=event.frame, purpose="retry", due=event.due),
            }
        case ev.ParallelStateStarted():
            f = _frame(s, event.frame)
            if f.timer_id is not None:  # a retry's timer has fired
                s.timers = _without(s.timers, f.timer_id)
                f.timer_id = None
            ids = [child_frame_id(event.frame, event.name, i) for i in range(event.branches)]
            f.results = (None,) * event.branches
            f.finished = f.failed = 0
            f.launched = event.branches
            s.frames = dict(s.frames)
            for i, cid in enumerate(ids):
                s.frames[cid] = Frame(
                    id=cid,
                    parent=event.frame,
                    parent_state=event.name,
                    index=i,
                    data=event.branch_input,
                    variables=f.variables,
                )
        case ev.MapStateStarted():
            f = _frame(s, event.frame)
            if f.timer_id is not None:
                s.timers = _without(s.timers, f.timer_id)
                f.timer_id = None
            f.items = tuple(event.items)
            f.results = (None,) * len(event.items)
            f.launched = f.finished = f.failed = 0
            f.max_concurrency = event.max_concurrency
            f.tolerated_failure_count = event.tolerated_failure_count
            f.tolerated_failure_percentage = event.tolerated_failure_percentage
        case ev.MapIterationStarted():
            f = _frame(s, event.frame)
            cid = child_frame_id(event.frame, event.name, event.index)
            f.launched += 1
            s.frames = dict(s.frames)
            s.frames[cid] = Frame(
                id=cid,
                parent=event.frame,
                parent_state=event.name,
                index=event.index,
                data=f.items[event.index],
                variables=f.variables,
            )
        case ev.MapIterationSucceeded():
            f = _frame(s, event.frame)
            results = list(f.results)
            results[event.index] = s.frames[
                child_frame_id(event.frame, event.name, event.index)
            ].data
            f.results = tuple(results)
            f.finished += 1
            _drop_frames(s, [child_frame_id(event.frame, event.name, event.index)])
        case ev.MapIterationFailed():
            f = _frame(s, event.frame)
            f.finished += 1
            f.failed += 1
            _drop_frames(s, [child_frame_id(event.frame, event.name, event.index)])
        case ev.MapStateSucceeded():
            f = _frame(s, event.frame)
            f.data = list(f.results)
            _drop_children(s, f)
        case ev.ParallelStateFailed() | ev.MapStateFailed():
            f = _frame(s, event.frame)
            f.error, f.cause = event.error, event.cause
            _drop_children(s, f)
        case _:
            assert_never(event)


def _end(s: ExecutionState, status: Status, timestamp: str | dt.datetime) -> None:
    s.status = status
    s.stopped_at = _text(timestamp)
    s.tasks = {}
    s.timers = {}


def _frame(s: ExecutionState, frame_id: str) -> Frame:
    """Copy-on-write access to one frame."""
    f = msgspec.structs.replace(s.frames[frame_id])
    s.frames = {**s.frames, frame_id: f}
    return f


def _own_frame(s: ExecutionState, frame_id: str) -> Frame:
    """A frame of a state whose frames are all private copies (`evolve_all`)."""
    return s.frames[frame_id]


def _complete(s: ExecutionState, task_id: str) -> None:
    s.completed_tasks = s.completed_tasks | {task_id}


def _text(timestamp: str | dt.datetime) -> str:
    return timestamp if isinstance(timestamp, str) else iso_millis(timestamp)


def _millis(timestamp: str) -> str:
    """RFC 3339 with milliseconds and "Z", as AWS writes context-object times."""
    if not timestamp:
        return timestamp
    try:
        t = parse_iso(timestamp)
    except ValueError:
        return timestamp
    if t.tzinfo is None:
        return timestamp
    return iso_millis(t)


def _enter(
    s: ExecutionState,
    event: ev._Entered,
    timestamp: str | dt.datetime,
    _frame: Callable[[ExecutionState, str], Frame],
) -> Frame:
    f = _frame(s, event.frame)
    f.current = event.name
    f.state_input = event.input
    f.entered_seq = s.seq
    if isinstance(timestamp, str):
        f.entered_time = timestamp if len(timestamp) == 24 else _millis(timestamp)
    else:  # a lazy evolve_all's: made text at its end, for the frames' last states only
        f.entered_time = timestamp  # type: ignore[assignment]
    f.retry_attempts = ()
    f.task_id = None
    f.timer_id = None
    f.heartbeat_timer_id = None
    return f


def _exit(
    s: ExecutionState, event: ev._Exited, _frame: Callable[[ExecutionState, str], Frame]
) -> None:
    f = _frame(s, event.frame)
    if f.launched:  # a Parallel or Map state's children (none launched: nothing to drop)
        _drop_children(s, f)
    f.current = None
    f.data = event.output
    f.retry_attempts = ()
    f.items = f.results = ()
    f.launched = f.finished = f.failed = 0
    if event.assigned_variables:
        f.variables = {**f.variables, **event.assigned_variables}
    if event.end:
        f.status = "succeeded"


def child_ids(f: Frame) -> list[str]:
    """The child frames a composite state has launched (some may have ended)."""
    if f.current is None or not f.launched:
        return []
    return [child_frame_id(f.id, f.current, i) for i in range(f.launched)]


def _drop_frames(s: ExecutionState, frame_ids: list[str]) -> None:
    """Forget child frames and everything nested in them, with their pending
    task and timer. Costs one copy of each map touched, not a scan per frame:
    a frame has at most one pending task and one timer."""
    frames = s.frames
    tasks, timers = s.tasks, s.timers
    copied = False
    stack = list(frame_ids)
    while stack:
        f = frames.get(stack.pop())
        if f is None:
            continue
        if not copied:
            frames, copied = dict(frames), True
        del frames[f.id]
        if f.task_id is not None and f.task_id in tasks:
            tasks = _without(tasks, f.task_id)
        if f.timer_id is not None and f.timer_id in timers:
            timers = _without(timers, f.timer_id)
        if f.heartbeat_timer_id is not None and f.heartbeat_timer_id in timers:
            timers = _without(timers, f.heartbeat_timer_id)
        stack.extend(child_ids(f))
    s.frames, s.tasks, s.timers = frames, tasks, timers


def _drop_children(s: ExecutionState, f: Frame) -> None:
    _drop_frames(s, child_ids(f))


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    if key not in d:
        return d
    copy = dict(d)
    del copy[key]
    return copy
