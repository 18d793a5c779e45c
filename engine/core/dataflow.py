"""Per-state data processing, in both query languages, and the number and time
fields of states, with AWS's rules and wording. Pure: everything an evaluation
reads comes in as arguments; nothing here calls back into decide.

JSONPath: InputPath -> Parameters -> (work) -> ResultSelector -> ResultPath ->
OutputPath. JSONata: Arguments -> (work) -> Output, with ``$states`` bound to
input, result, errorOutput and context. Number and time fields: Wait's
Seconds/Timestamp (and their Path), Task's TimeoutSeconds/HeartbeatSeconds (and
their Path), Map's MaxConcurrency/ToleratedFailure* (and their Path) and
ItemBatcher. Failures raise ``StatesError`` with AWS's error name and bare
cause; the decider adds the state prefix.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from engine.core.asl import errors as E
from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import StatesError
from engine.core.asl.jsonata import JsonataTemplate
from engine.core.asl.jsonpath import JsonPath, apply_path, java_str, set_result
from engine.core.asl.model import (
    IO,
    AnyTemplate,
    ItemBatcher,
    JsonataIO,
    NumberField,
    WaitState,
)


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


def evaluate_jsonata(template: JsonataTemplate, states: dict[str, Any], scope: Scope) -> Any:
    return template.render(states, scope.variables, scope.env)


# --- data flow ---------------------------------------------------------------------


def effective_input(io: IO, state_input: Any, scope: Scope) -> Any:
    """The value a state works on: InputPath then Parameters (JSONPath), or
    Arguments (JSONata)."""
    if isinstance(io, JsonataIO):
        if io.arguments is not None:
            return evaluate_jsonata(io.arguments, jsonata_states(scope, state_input), scope)
        return state_input
    value = path_value(io.input_path, state_input, scope)
    if io.parameters is not None:
        value = io.parameters.render(value, scope.context, scope.env)
    return value


def state_output(
    io: IO, state_input: Any, result: Any, scope: Scope, *, default_to_input: bool = False
) -> Any:
    """ResultSelector -> ResultPath -> OutputPath (JSONPath) or Output (JSONata).

    ``default_to_input``: JSONata states without a result (Pass, Wait, Choice,
    Succeed) output their input when Output is absent."""
    if isinstance(io, JsonataIO):
        if io.output is not None:
            states = jsonata_states(scope, state_input, result, has_result=not default_to_input)
            return evaluate_jsonata(io.output, states, scope)
        return state_input if default_to_input else result
    if io.result_selector is not None:
        result = io.result_selector.render(result, scope.context, scope.env)
    merged = set_result(state_input, io.result_path, result)
    return path_value(io.output_path, merged, scope)


def output_only(io: IO, value: Any, scope: Scope) -> Any:
    """OutputPath alone (Choice, Wait, Succeed in JSONPath), or Output (JSONata)."""
    if isinstance(io, JsonataIO):
        if io.output is not None:
            return evaluate_jsonata(io.output, jsonata_states(scope, value), scope)
        return value
    return path_value(io.output_path, value, scope)


def assigned_variables(
    assign: AnyTemplate,
    state_input: Any,
    result: Any,
    scope: Scope,
    *,
    has_result: bool,
    error_output: Any = None,
    has_error: bool = False,
) -> dict[str, Any]:
    """Evaluate an Assign block against the variables as they were before the state."""
    if isinstance(assign, JsonataTemplate):
        states = jsonata_states(
            scope,
            state_input,
            result,
            error_output,
            has_result=has_result,
            has_error=has_error,
        )
        value = evaluate_jsonata(assign, states, scope)
    else:
        source = error_output if has_error else (result if has_result else state_input)
        value = assign.render(source, scope.context, scope.env)
    if not isinstance(value, dict):
        raise StatesError(E.RUNTIME, "The Assign field must evaluate to a JSON object")
    return value


def path_value(path: JsonPath | None, value: Any, scope: Scope) -> Any:
    return apply_path(path, value, scope.context, scope.variables)


# --- number and time fields -----------------------------------------------------------


def wait_due(st: WaitState, value: Any, raw: Any, scope: Scope, now: dt.datetime) -> dt.datetime:
    """When a Wait state ends: from Seconds, SecondsPath, Timestamp or TimestampPath."""
    jsonata = isinstance(st.io, JsonataIO)
    if st.seconds_path is not None:
        path = st.seconds_path.text
        seconds = path_value(st.seconds_path, value, scope)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise StatesError(
                E.RUNTIME,
                f"The SecondsPath parameter cannot be parsed as a long value: "
                f"{path} == {java_str(seconds)}",
            )
        if isinstance(seconds, float) and not seconds.is_integer():
            raise StatesError(
                E.RUNTIME,
                f"The SecondsPath parameter cannot be parsed as a long value: {path} == {seconds}",
            )
        if seconds < 0:
            raise StatesError(
                E.RUNTIME,
                f"The SecondsPath parameter references a negative value: {path} == {seconds}",
            )
        if seconds > MAX_LONG:
            # AWS reads the value as a Java long.
            raise StatesError(
                E.RUNTIME,
                f"The SecondsPath parameter cannot be parsed as a long value: "
                f"{path} == {java_str(seconds)}",
            )
        return _wait_until(now, int(seconds), f"SecondsPath parameter: {path} == {int(seconds)}")
    if st.seconds is not None:
        states = jsonata_states(scope, raw) if jsonata else {}
        seconds = evaluate_jsonata(st.seconds, states, scope)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or seconds < 0
            or (isinstance(seconds, float) and not seconds.is_integer())
        ):
            raise StatesError(
                E.RUNTIME,
                "The Seconds parameter does not reference a valid "
                f"positive integer value: {java_str(seconds)}",
            )
        return _wait_until(now, int(seconds), f"Seconds parameter: {java_str(int(seconds))}")
    if st.timestamp_path is not None:
        stamp = path_value(st.timestamp_path, value, scope)
        parsed = parse_timestamp(stamp)
        if parsed is None:
            raise StatesError(
                E.RUNTIME,
                "The TimestampPath parameter does not reference a valid ISO-8601 extended "
                f"offset date-time format string: {st.timestamp_path.text} == "
                f"{java_str(stamp)}",
            )
        return _in_utc(parsed, f"TimestampPath parameter: {st.timestamp_path.text} == {stamp}")
    assert st.timestamp is not None
    if jsonata:
        stamp = evaluate_jsonata(st.timestamp, jsonata_states(scope, raw), scope)
        parsed = parse_timestamp(stamp)
        if parsed is None:
            raise StatesError(
                E.QUERY_EVALUATION_ERROR,
                "The Timestamp field cannot be parsed as an ISO-8601 extended offset "
                f"date-time format string: {java_str(stamp)}",
            )
        return _in_utc(parsed, f"Timestamp field: {stamp}")
    stamp = evaluate_jsonata(st.timestamp, {}, scope)
    parsed = parse_timestamp(stamp)
    if parsed is None:
        raise StatesError(
            E.RUNTIME,
            "The Timestamp parameter does not reference a valid ISO-8601 "
            f"extended offset date-time format string: {java_str(stamp)}",
        )
    return _in_utc(parsed, f"Timestamp parameter: {stamp}")


# A Java long: AWS reads whole-second fields into one.
MAX_LONG = 2**63 - 1
_OUT_OF_RANGE = "is out of range (the latest time steplog can record is 9999-12-31T23:59:59Z)"


def _wait_until(now: dt.datetime, seconds: int, what: str) -> dt.datetime:
    """``now`` plus ``seconds``; States.Runtime when that is past the last representable
    time (a huge SecondsPath value must fail the state, not the engine)."""
    try:
        return now + dt.timedelta(seconds=seconds)
    except OverflowError:
        raise StatesError(E.RUNTIME, f"The Wait state's due time {_OUT_OF_RANGE}: {what}") from None


def _in_utc(parsed: dt.datetime, what: str) -> dt.datetime:
    """A parsed timestamp in UTC; States.Runtime when its offset moves it out of range
    (``9999-12-31T23:59:59-05:00``, ``0001-01-01T00:00:00+01:00``)."""
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise StatesError(E.RUNTIME, f"The Wait state's due time {_OUT_OF_RANGE}: {what}") from None


def seconds_after(now: dt.datetime, seconds: int, field_name: str) -> dt.datetime:
    """``now`` plus a TimeoutSeconds / HeartbeatSeconds value; States.Runtime when the
    deadline is past the last representable time."""
    try:
        return now + dt.timedelta(seconds=seconds)
    except OverflowError:
        raise StatesError(
            E.RUNTIME,
            f"The {field_name} field refers to value {_quoted(seconds)} which is too large: "
            f"the deadline {_OUT_OF_RANGE}",
        ) from None


def positive_int(io: IO, spec: NumberField | None, name: str, raw: Any, scope: Scope) -> int | None:
    """TimeoutSeconds / HeartbeatSeconds (or their Path): a positive integer, else
    States.Runtime. A *Path reads the input after InputPath."""
    if spec is None:
        return None
    if isinstance(spec, JsonPath):
        assert not isinstance(io, JsonataIO)
        value = path_value(spec, path_value(io.input_path, raw, scope), scope)
        field_name = name + "Path"
    elif isinstance(spec, JsonataTemplate):
        value = evaluate_jsonata(spec, jsonata_states(scope, raw), scope)
        field_name = name
    else:
        value = spec
        field_name = name
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise StatesError(
            E.RUNTIME,
            f"The {field_name} field refers to value {_quoted(value)} which is not a valid integer",
        )
    return value


def map_number(
    spec: NumberField | None, name: str, value: Any, raw: Any, scope: Scope
) -> float | None:
    """MaxConcurrency / ToleratedFailureCount / ToleratedFailurePercentage (or their Path)."""
    if spec is None:
        return None
    percentage = name == "ToleratedFailurePercentage"
    if isinstance(spec, JsonPath):
        try:
            found = spec.evaluate(value, scope.context, scope.variables)
        except ValueError:
            found = None
        field_name = name + "Path"
    elif isinstance(spec, JsonataTemplate):
        found = evaluate_jsonata(spec, jsonata_states(scope, raw), scope)
        field_name = name
    else:
        return float(spec) if percentage else spec
    number = _as_number(found, integer=not percentage)
    where = f": {spec.text}" if isinstance(spec, JsonPath) else ""
    if number is None:
        kind = "float" if percentage else "integer"
        raise StatesError(
            E.RUNTIME,
            f"The {field_name} field refers to value {_quoted(found)} "
            f"which is not a valid {kind}{where}",
        )
    if percentage and not 0 <= number <= 100:
        raise StatesError(E.RUNTIME, f"{name} must be between 0 and 100.")
    if number < 0:
        if name == "ToleratedFailureCount":
            raise StatesError(E.RUNTIME, f"{name} cannot be negative.")
        raise StatesError(
            E.RUNTIME,
            f"The {field_name} field refers to value {_quoted(found)} "
            f"which is not a valid integer{where}",
        )
    return number


def batch_items(batcher: ItemBatcher, items: list[Any]) -> list[Any]:
    size = int(batcher.max_items_per_batch or len(items) or 1)
    batches: list[Any] = []
    for start in range(0, len(items), size):
        batch: dict[str, Any] = {"Items": items[start : start + size]}
        if batcher.has_batch_input:
            batch["BatchInput"] = batcher.batch_input
        batches.append(batch)
    return batches


def _as_number(value: Any, *, integer: bool) -> float | int | None:
    """A JSON number, or a string holding one (AWS parses numeric strings in the
    *Path fields of a Map); None when it is neither (or not an integer)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            if integer:
                return None
            try:
                value = float(text)
            except ValueError:
                return None
            if not math.isfinite(value):
                return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if integer and isinstance(value, float):
        if not value.is_integer():
            return None
        return int(value)
    return value


def _quoted(value: Any) -> str:
    return f'"{java_str(value)}"'


def parse_timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    if "T" not in text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed
