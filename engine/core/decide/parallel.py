"""The Parallel state: starts one child frame per branch on the effective input;
``completion`` gathers their outputs, ``failures`` their failures."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core.asl.model import ParallelState
from engine.core.dataflow import Scope, effective_input
from engine.core.decide.decider import Decider, Enter
from engine.core.state import child_frame_id


def execute(d: Decider, frame_id: str, st: ParallelState, raw: Any, scope: Scope) -> None:
    value = effective_input(st.io, raw, scope)
    d.emit(
        ev.ParallelStateStarted(
            frame=frame_id, name=st.name, branches=len(st.branches), branch_input=value
        )
    )
    for i, branch in enumerate(st.branches):
        d.agenda.append(Enter(child_frame_id(frame_id, st.name, i), branch.start_at, value))
