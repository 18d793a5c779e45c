"""The Succeed state: ends its frame with its (filtered) input."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core.asl.model import SucceedState
from engine.core.dataflow import Scope, effective_input, output_only
from engine.core.decide.completion import leave
from engine.core.decide.decider import Decider


def execute(d: Decider, frame_id: str, st: SucceedState, raw: Any, scope: Scope) -> None:
    out = output_only(st.io, effective_input(st.io, raw, scope), scope)
    leave(
        d,
        frame_id,
        st.name,
        st.io,
        ev.SucceedStateExited,
        None,
        out,
        raw,
        None,
        scope,
        has_result=False,
    )
