"""The Choice state: the first matching branch (a JSONPath rule or a JSONata
condition) names the next state, else Default, else States.NoChoiceMatched."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.errors import StatesError
from engine.core.asl.model import ChoiceBranch, ChoiceState, JsonataIO
from engine.core.dataflow import (
    Scope,
    assigned_variables,
    effective_input,
    evaluate_jsonata,
    jsonata_states,
    output_only,
)
from engine.core.decide.completion import leave
from engine.core.decide.decider import Decider, Enter, StateFailure


def execute(d: Decider, frame_id: str, st: ChoiceState, raw: Any, scope: Scope) -> None:
    io = st.io
    jsonata = isinstance(io, JsonataIO)
    value = effective_input(io, raw, scope)
    for choice in st.choices:
        if not _matched(choice, value, raw, scope):
            continue
        if jsonata and choice.output is not None:
            out = evaluate_jsonata(choice.output, jsonata_states(scope, raw), scope)
        else:
            out = output_only(io, raw if jsonata else value, scope)
        assigned = None
        if choice.assign is not None:
            assigned = assigned_variables(choice.assign, raw, None, scope, has_result=False)
        d.emit(
            ev.ChoiceStateExited(
                frame=frame_id, name=st.name, output=out, assigned_variables=assigned
            )
        )
        d.agenda.append(Enter(frame_id, choice.next, out))
        return
    if st.default is not None:
        out = output_only(io, raw if jsonata else value, scope)
        leave(
            d,
            frame_id,
            st.name,
            io,
            ev.ChoiceStateExited,
            st.default,
            out,
            raw,
            None,
            scope,
            has_result=False,
        )
        return
    raise StateFailure(E.NO_CHOICE_MATCHED, "No Matches!")


def _matched(choice: ChoiceBranch, value: Any, raw: Any, scope: Scope) -> bool:
    if choice.rule is not None:
        return choice.rule.matches(value, scope.context, scope.variables)
    assert choice.condition is not None
    result = evaluate_jsonata(choice.condition, jsonata_states(scope, raw), scope)
    if not isinstance(result, bool):
        raise StatesError(
            E.QUERY_EVALUATION_ERROR, "The Condition field must evaluate to a boolean"
        )
    return result
