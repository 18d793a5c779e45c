"""Per-state data processing: the input and output filters of ASL, in both
query languages. Pure: everything a filter reads comes in as arguments.

JSONPath: InputPath -> Parameters -> (work) -> ResultSelector -> ResultPath ->
OutputPath. JSONata: Arguments -> (work) -> Output, with ``$states`` bound to
input, result, errorOutput and context. Failures raise ``StatesError`` with
AWS's error name and bare cause; the decider adds the state prefix.
"""

from __future__ import annotations

from typing import Any

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import RUNTIME, StatesError
from engine.core.asl.jsonpath import JsonPath, apply_path, set_result
from engine.core.asl.model import JSONATA, StateDef


class Scope:
    """What an evaluation inside one state may read besides its input."""

    __slots__ = ("context", "env")

    def __init__(self, context: dict[str, Any], env: EvalEnv) -> None:
        self.context = context
        self.env = env

    @property
    def variables(self) -> dict[str, Any]:
        return self.env.variables


def jsonata_states(
    scope: Scope,
    state_input: Any,
    result: Any = None,
    error_output: Any = None,
    *,
    has_result: bool = False,
    has_error: bool = False,
) -> dict[str, Any]:
    states: dict[str, Any] = {"input": state_input, "context": scope.context}
    if has_result:
        states["result"] = result
    if has_error:
        states["errorOutput"] = error_output
    return states


def evaluate_jsonata(template: Any, states: dict[str, Any], scope: Scope) -> Any:
    return template.render(states, scope.variables, scope.env)


def effective_input(st: StateDef, state_input: Any, scope: Scope) -> Any:
    """The value a state works on: InputPath then Parameters (JSONPath), or
    Arguments (JSONata)."""
    if st.query_language == JSONATA:
        if st.has_arguments:
            return evaluate_jsonata(st.arguments, jsonata_states(scope, state_input), scope)
        return state_input
    value = _apply(st.input_path, state_input, scope)
    if st.parameters is not None:
        value = st.parameters.render(value, scope.context, scope.env)
    return value


def state_output(
    st: StateDef, state_input: Any, result: Any, scope: Scope, *, default_to_input: bool = False
) -> Any:
    """ResultSelector -> ResultPath -> OutputPath (JSONPath) or Output (JSONata).

    ``default_to_input``: JSONata states without a result (Pass, Wait, Choice,
    Succeed) output their input when Output is absent."""
    if st.query_language == JSONATA:
        if st.has_output:
            states = jsonata_states(scope, state_input, result, has_result=not default_to_input)
            return evaluate_jsonata(st.output, states, scope)
        return state_input if default_to_input else result
    if st.result_selector is not None:
        result = st.result_selector.render(result, scope.context, scope.env)
    merged = set_result(state_input, st.result_path, result)
    return _apply(st.output_path, merged, scope)


def output_only(st: StateDef, value: Any, scope: Scope) -> Any:
    """OutputPath alone (Choice, Wait, Succeed in JSONPath)."""
    if st.query_language == JSONATA:
        if st.has_output:
            return evaluate_jsonata(st.output, jsonata_states(scope, value), scope)
        return value
    return _apply(st.output_path, value, scope)


def assigned_variables(
    st_assign: Any,
    query_language: str,
    state_input: Any,
    result: Any,
    scope: Scope,
    *,
    has_result: bool,
    error_output: Any = None,
    has_error: bool = False,
) -> dict[str, Any] | None:
    """Evaluate an Assign block against the variables as they were before the state."""
    if st_assign is None:
        return None
    if query_language == JSONATA:
        states = jsonata_states(
            scope,
            state_input,
            result,
            error_output,
            has_result=has_result,
            has_error=has_error,
        )
        value = evaluate_jsonata(st_assign, states, scope)
    else:
        source = error_output if has_error else (result if has_result else state_input)
        value = st_assign.render(source, scope.context, scope.env)
    if not isinstance(value, dict):
        raise StatesError(RUNTIME, "The Assign field must evaluate to a JSON object")
    return value


def _apply(path: JsonPath | None, data: Any, scope: Scope) -> Any:
    return apply_path(path, data, scope.context, scope.variables)
