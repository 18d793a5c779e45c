"""Leaving a state and finishing frames: a state exits to its Next (or ends its
frame); a finished frame completes its Parallel branch or Map iteration, which
may complete the Parallel or Map state itself or launch the next iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.errors import StatesError
from engine.core.asl.model import IO, MapState, ParallelState
from engine.core.dataflow import Scope, assigned_variables, state_output
from engine.core.decide.decider import MAX_PAYLOAD_BYTES, Decider, Enter
from engine.core.state import child_frame_id, child_ids

# The Exited event of a state kind (PassStateExited, ...).
Exited = Callable[..., ev.Event]

# How many iterations a Map runs at once when MaxConcurrency is 0 (or larger):
# AWS runs at most 40 inline iterations, and 10,000 child executions of a
# DISTRIBUTED Map, at a time.
INLINE_MAP_CONCURRENCY = 40
DISTRIBUTED_MAP_CONCURRENCY = 10_000

_json_bytes = msgspec.json.Encoder().encode


def leave(
    d: Decider,
    frame_id: str,
    name: str,
    io: IO,
    exited: Exited,
    nxt: str | None,
    output: Any,
    state_input: Any,
    result: Any,
    scope: Scope,
    *,
    has_result: bool,
) -> None:
    """Exit the current state with ``output`` and move on to ``nxt`` (or end the frame)."""
    if len(_json_bytes(output)) > MAX_PAYLOAD_BYTES:
        raise StatesError(
            E.DATA_LIMIT_EXCEEDED,
            f"The state/task '{name}' returned a result with a size exceeding "
            "the maximum number of bytes service limit.",
        )
    assigned = None
    if io.assign is not None:
        assigned = assigned_variables(io.assign, state_input, result, scope, has_result=has_result)
    end = nxt is None
    d.emit(exited(frame=frame_id, name=name, output=output, end=end, assigned_variables=assigned))
    if nxt is None:
        frame_done(d, frame_id)
    else:
        d.agenda.append(Enter(frame_id, nxt, output))


def frame_done(d: Decider, frame_id: str) -> None:
    """A frame reached an End: the execution succeeds, or the enclosing Parallel
    branch or Map iteration is done."""
    f = d.state.frames[frame_id]
    if f.parent is None:
        d.emit(ev.ExecutionSucceeded(output=f.data))
        return
    parent_id = f.parent
    st = d.machine_of(parent_id).states[d.current(parent_id)]
    if isinstance(st, MapState):
        d.emit(ev.MapIterationSucceeded(frame=parent_id, name=st.name, index=f.index))
        map_progress(d, parent_id, st)
        return
    assert isinstance(st, ParallelState)
    parent = d.state.frames[parent_id]
    children = [d.state.frames[c] for c in child_ids(parent)]
    if all(c.status == "succeeded" for c in children):
        composite_done(d, parent_id, st, [c.data for c in children])


def map_progress(d: Decider, frame_id: str, st: MapState) -> None:
    """An iteration ended (and was tolerated): the Map succeeds, or more iterations start."""
    f = d.state.frames[frame_id]
    if f.finished == len(f.items):
        d.emit(ev.MapStateSucceeded(frame=frame_id, name=st.name))
        composite_done(d, frame_id, st, list(d.state.frames[frame_id].data))
    else:
        launch_iterations(d, frame_id, st)


def launch_iterations(d: Decider, frame_id: str, st: MapState) -> None:
    """Start Map iterations up to the concurrency limit."""
    start_at = st.processor.start_at
    f = d.state.frames[frame_id]
    running = f.launched - f.finished
    cap = INLINE_MAP_CONCURRENCY if st.mode != "DISTRIBUTED" else DISTRIBUTED_MAP_CONCURRENCY
    limit = min(f.max_concurrency or cap, cap)
    while f.launched < len(f.items) and running < limit:
        index = f.launched
        d.emit(ev.MapIterationStarted(frame=frame_id, name=st.name, index=index))
        f = d.state.frames[frame_id]
        child = child_frame_id(frame_id, st.name, index)
        d.agenda.append(Enter(child, start_at, f.items[index]))
        running += 1


def composite_done(
    d: Decider, frame_id: str, st: ParallelState | MapState, results: list[Any]
) -> None:
    """Every branch or iteration is done: the Parallel or Map state exits with their results."""
    d.guard(frame_id, st.name, _exit_composite, d, frame_id, st, results)


def _exit_composite(
    d: Decider, frame_id: str, st: ParallelState | MapState, results: list[Any]
) -> None:
    state_input = d.state.frames[frame_id].state_input
    scope = d.scope(frame_id, st.name)
    out = state_output(st.io, state_input, results, scope)
    exited = ev.MapStateExited if isinstance(st, MapState) else ev.ParallelStateExited
    leave(
        d,
        frame_id,
        st.name,
        st.io,
        exited,
        st.next,
        out,
        state_input,
        results,
        scope,
        has_result=True,
    )
