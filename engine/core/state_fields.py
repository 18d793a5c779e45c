"""The number and time fields of states, evaluated with AWS's rules and wording:
Wait's Seconds/Timestamp (and their Path), Task's TimeoutSeconds/HeartbeatSeconds
(and their Path), Map's MaxConcurrency/ToleratedFailure* (and their Path) and
ItemBatcher. Pure functions; errors are ``StatesError`` with the bare cause.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from engine.core.asl import errors as E
from engine.core.asl.errors import StatesError
from engine.core.asl.jsonpath import JsonPath, apply_path, java_str
from engine.core.asl.model import JSONATA, StateDef
from engine.core.dataflow import Scope, evaluate_jsonata, jsonata_states


def wait_due(st: StateDef, value: Any, raw: Any, scope: Scope, now: dt.datetime) -> dt.datetime:
    """When a Wait state ends: from Seconds, SecondsPath, Timestamp or TimestampPath."""
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
        return now + dt.timedelta(seconds=int(seconds))
    if st.seconds is not None:
        if st.query_language == JSONATA:
            seconds = evaluate_jsonata(st.seconds, jsonata_states(scope, raw), scope)
            field_name = "Seconds"
        else:
            seconds = evaluate_jsonata(st.seconds, {}, scope)
            field_name = "Seconds"
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or seconds < 0
            or (isinstance(seconds, float) and not seconds.is_integer())
        ):
            raise StatesError(
                E.RUNTIME,
                f"The {field_name} parameter does not reference a valid "
                f"positive integer value: {java_str(seconds)}",
            )
        return now + dt.timedelta(seconds=int(seconds))
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
        return parsed
    if st.query_language == JSONATA:
        stamp = evaluate_jsonata(st.timestamp, jsonata_states(scope, raw), scope)
        parsed = parse_timestamp(stamp)
        if parsed is None:
            raise StatesError(
                E.QUERY_EVALUATION_ERROR,
                "The Timestamp field cannot be parsed as an ISO-8601 extended offset "
                f"date-time format string: {java_str(stamp)}",
            )
        return parsed
    stamp = evaluate_jsonata(st.timestamp, {}, scope)
    parsed = parse_timestamp(stamp)
    if parsed is None:
        raise StatesError(
            E.RUNTIME,
            "The Timestamp parameter does not reference a valid ISO-8601 "
            f"extended offset date-time format string: {java_str(stamp)}",
        )
    return parsed


def positive_int(st: StateDef, spec: Any, name: str, raw: Any, scope: Scope) -> int | None:
    """TimeoutSeconds / HeartbeatSeconds (or their Path): a positive integer, else States.Runtime."""
    if spec is None:
        return None
    if isinstance(spec, JsonPath):
        value = path_value(spec, effective_input_for_paths(st, raw, scope), scope)
        field_name = name + "Path"
    elif isinstance(spec, int | float) and not isinstance(spec, bool):
        value = spec
        field_name = name
    else:
        value = evaluate_jsonata(spec, jsonata_states(scope, raw), scope)
        field_name = name
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise StatesError(
            E.RUNTIME,
            f"The {field_name} field refers to value {_quoted(value)} which is not a valid integer",
        )
    return value


def map_number(spec: Any, name: str, value: Any, raw: Any, scope: Scope) -> float | None:
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
    elif isinstance(spec, int | float) and not isinstance(spec, bool):
        return float(spec) if percentage else spec
    else:
        found = evaluate_jsonata(spec, jsonata_states(scope, raw), scope)
        field_name = name
    number = _as_number(found, integer=not percentage)
    if number is None:
        kind = "float" if percentage else "integer"
        where = f": {spec.text}" if isinstance(spec, JsonPath) else ""
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
            f"which is not a valid integer"
            + (f": {spec.text}" if isinstance(spec, JsonPath) else ""),
        )
    return number


def batch_items(batcher: dict[str, Any], items: list[Any]) -> list[Any]:
    size = batcher.get("MaxItemsPerBatch") or len(items) or 1
    batches: list[Any] = []
    for start in range(0, len(items), int(size)):
        batch: dict[str, Any] = {"Items": items[start : start + int(size)]}
        if "BatchInput" in batcher:
            batch["BatchInput"] = batcher["BatchInput"]
        batches.append(batch)
    return batches


def effective_input_for_paths(st: StateDef, raw: Any, scope: Scope) -> Any:
    """*Path fields of a Task read the input after InputPath."""
    return apply_path(st.input_path, raw, scope.context, scope.variables)


def path_value(path: JsonPath, value: Any, scope: Scope) -> Any:
    return apply_path(path, value, scope.context, scope.variables)


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
