"""The Fail state: its frame fails with Error and Cause (or ErrorPath, CausePath)."""

from __future__ import annotations

from typing import Any

from engine.core.asl.jsonpath import java_str
from engine.core.asl.model import FailState
from engine.core.dataflow import Scope, evaluate_jsonata, jsonata_states
from engine.core.decide.decider import Decider
from engine.core.decide.failures import frame_failed


def execute(d: Decider, frame_id: str, st: FailState, raw: Any, scope: Scope) -> None:
    error, cause = _fields(st, raw, scope)
    frame_failed(d, frame_id, error, cause)


def _fields(st: FailState, raw: Any, scope: Scope) -> tuple[str | None, str | None]:
    error: Any
    cause: Any
    if st.jsonata:
        states = jsonata_states(scope, raw)
        error = evaluate_jsonata(st.error, states, scope) if st.error is not None else None
        cause = evaluate_jsonata(st.cause, states, scope) if st.cause is not None else None
    else:
        # JSONPath Error and Cause are constants (compiled as constant templates).
        error = st.error.render(raw, scope.context, scope.env) if st.error else None
        cause = st.cause.render(raw, scope.context, scope.env) if st.cause else None
        if st.error_path is not None:
            error = st.error_path.render(raw, scope.context, scope.env)
        if st.cause_path is not None:
            cause = st.cause_path.render(raw, scope.context, scope.env)
    return (
        error if error is None or isinstance(error, str) else java_str(error),
        cause if cause is None or isinstance(cause, str) else java_str(cause),
    )
