"""The Pass state: its result is ``Result``, or its effective input."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core.asl.model import JsonataIO, PassState
from engine.core.dataflow import Scope, effective_input, state_output
from engine.core.decide.completion import leave
from engine.core.decide.decider import Decider


def execute(d: Decider, frame_id: str, st: PassState, raw: Any, scope: Scope) -> None:
    io = st.io
    value = effective_input(io, raw, scope)
    exited = ev.PassStateExited
    if isinstance(io, JsonataIO):
        out = state_output(io, raw, None, scope, default_to_input=True)
        leave(d, frame_id, st.name, io, exited, st.next, out, raw, None, scope, has_result=False)
        return
    result = st.result if st.has_result else value
    out = state_output(io, raw, result, scope)
    leave(d, frame_id, st.name, io, exited, st.next, out, raw, result, scope, has_result=True)
