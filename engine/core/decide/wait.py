"""The Wait state: its due time is worked out on entry and recorded with
WaitStateEntered (with the timer); the state leaves when the timer fires, or at
once when the time has already come."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.errors import StatesError
from engine.core.asl.model import JsonataIO, WaitState
from engine.core.dataflow import effective_input, output_only, wait_due
from engine.core.decide.completion import leave
from engine.core.decide.decider import Decider, describe_exception
from engine.core.timestamps import iso_millis


def enter(d: Decider, frame_id: str, st: WaitState, state_input: Any) -> None:
    # The due time is worked out before the Entered event so that the event can
    # carry the timer; an error here is raised after the event, as AWS records it.
    timer_id = str(d.state.seq + 1)
    try:
        scope = d.scope(frame_id, st.name)
        value = effective_input(st.io, state_input, scope)
        due = wait_due(st, value, state_input, scope, d.now)
    except StatesError as err:
        d.emit(ev.WaitStateEntered(frame=frame_id, name=st.name, input=state_input))
        d.fail_with(frame_id, st.name, err)
        return
    except Exception as exc:  # not an ASL error: as in Decider.guard, deterministic
        d.emit(ev.WaitStateEntered(frame=frame_id, name=st.name, input=state_input))
        d.fail(frame_id, E.RUNTIME, d.runtime_cause(frame_id, st.name, describe_exception(exc)))
        return
    if due <= d.now:
        d.emit(ev.WaitStateEntered(frame=frame_id, name=st.name, input=state_input))
        over(d, frame_id)
        return
    d.emit(
        ev.WaitStateEntered(
            frame=frame_id, name=st.name, input=state_input, timer_id=timer_id, due=iso_millis(due)
        )
    )


def over(d: Decider, frame_id: str) -> None:
    """The wait is over: the Wait state leaves."""
    st = d.state_def(frame_id)
    assert isinstance(st, WaitState)
    d.guard(frame_id, st.name, _leave, d, frame_id, st)


def _leave(d: Decider, frame_id: str, st: WaitState) -> None:
    state_input = d.state.frames[frame_id].state_input
    scope = d.scope(frame_id, st.name)
    value = effective_input(st.io, state_input, scope)
    out = output_only(st.io, state_input if isinstance(st.io, JsonataIO) else value, scope)
    leave(
        d,
        frame_id,
        st.name,
        st.io,
        ev.WaitStateExited,
        st.next,
        out,
        state_input,
        None,
        scope,
        has_result=False,
    )
