"""``compile_definition(doc) -> Definition``: an ASL document compiled into the
typed model of ``engine.core.asl.model``.

It validates first (``engine.core.asl.validate``) and raises ``InvalidDefinition``
listing every (json path, message); whatever the validator lets through but a
compiler refuses (an expression that does not parse, a ``.$`` value that is not a
string) is reported the same way, with the state's path.
"""

from __future__ import annotations

import json
from typing import Any

from engine.core.asl import jsonata
from engine.core.asl.choice import compile_choice
from engine.core.asl.jsonata import JsonataTemplate
from engine.core.asl.jsonpath import JsonPath, compile_path
from engine.core.asl.model import (
    IO,
    JSONATA,
    JSONPATH,
    AnyTemplate,
    Catcher,
    ChoiceBranch,
    ChoiceState,
    Definition,
    FailState,
    ItemBatcher,
    JsonataIO,
    Machine,
    MapState,
    NumberField,
    ParallelState,
    PassState,
    PathIO,
    Retrier,
    State,
    SucceedState,
    TaskState,
    WaitState,
)
from engine.core.asl.payload import FieldExpression, compile_field, compile_template
from engine.core.asl.validate import json_path_key, validate_definition
from engine.errors import InvalidDefinition

_ROOT = compile_path("$")


def compile_definition(doc: Any) -> Definition:
    errors = validate_definition(doc)
    if errors:
        raise InvalidDefinition([(e.path, e.message) for e in errors])
    assert isinstance(doc, dict)
    ql = doc.get("QueryLanguage", JSONPATH)
    return Definition(machine=_machine(doc, ql, "$"), timeout_seconds=doc.get("TimeoutSeconds"))


def _machine(doc: dict[str, Any], parent_ql: str, path: str) -> Machine:
    ql = doc.get("QueryLanguage", parent_ql)
    states = {
        name: _compiled_state(name, body, ql, json_path_key(f"{path}.States", name))
        for name, body in doc["States"].items()
    }
    return Machine(start_at=doc["StartAt"], states=states)


def _compiled_state(name: str, body: dict[str, Any], ql: str, path: str) -> State:
    try:
        return _state(name, body, body.get("QueryLanguage", ql), path)
    except InvalidDefinition:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidDefinition([(path, str(exc))]) from None


def _state(name: str, body: dict[str, Any], ql: str, path: str) -> State:
    t = body["Type"]
    io = _io(body, ql)
    nxt = body.get("Next")
    match t:
        case "Pass":
            return PassState(name, io, nxt, body.get("Result"), "Result" in body)
        case "Task":
            return TaskState(
                name,
                io,
                nxt,
                body["Resource"],
                timeout_seconds=_number_field(body, "TimeoutSeconds"),
                heartbeat_seconds=_number_field(body, "HeartbeatSeconds"),
                retry=_retriers(body),
                catch=_catchers(body, ql),
            )
        case "Choice":
            return ChoiceState(
                name,
                io,
                tuple(
                    _choice(c, ql, f"$.States.{name}.Choices[{i}]")
                    for i, c in enumerate(body["Choices"])
                ),
                body.get("Default"),
            )
        case "Wait":
            return WaitState(
                name,
                io,
                nxt,
                seconds=_jsonata_field(body, "Seconds"),
                seconds_path=_path(body, "SecondsPath"),
                timestamp=_jsonata_field(body, "Timestamp"),
                timestamp_path=_path(body, "TimestampPath"),
            )
        case "Succeed":
            return SucceedState(name, io)
        case "Fail":
            return FailState(
                name,
                ql == JSONATA,
                error=_jsonata_field(body, "Error"),
                cause=_jsonata_field(body, "Cause"),
                error_path=_fail_path("ErrorPath", body.get("ErrorPath")),
                cause_path=_fail_path("CausePath", body.get("CausePath")),
            )
        case "Parallel":
            branches = tuple(
                _machine(b, ql, f"{path}.Branches[{i}]") for i, b in enumerate(body["Branches"])
            )
            return ParallelState(
                name, io, nxt, branches, retry=_retriers(body), catch=_catchers(body, ql)
            )
        case "Map":
            return _map(name, body, ql, path, io, nxt)
    raise ValueError(f"Unsupported state type {t}")


def _map(name: str, body: dict[str, Any], ql: str, path: str, io: IO, nxt: str | None) -> MapState:
    proc = body.get("ItemProcessor") or body.get("Iterator")
    assert isinstance(proc, dict)
    field = "ItemProcessor" if "ItemProcessor" in body else "Iterator"
    items, items_text = None, ""
    if "Items" in body:
        items = jsonata.compile_jsonata_template(body["Items"], "Items")
        raw_items = body["Items"]
        items_text = (
            raw_items[2:-2].strip() if jsonata.is_jsonata(raw_items) else json.dumps(raw_items)
        )
    config = proc.get("ProcessorConfig") or {}
    selector = body.get("ItemSelector", body.get("Parameters"))
    item_selector: AnyTemplate | None = None
    if selector is not None or "ItemSelector" in body:
        item_selector = (
            compile_template(selector)
            if ql == JSONPATH
            else jsonata.compile_jsonata_template(selector, "ItemSelector")
        )
    batcher = body.get("ItemBatcher")
    return MapState(
        name,
        io,
        nxt,
        _machine(proc, ql, f"{path}.{field}"),
        mode=str(config.get("Mode", "INLINE")),
        items_path=_opt_path(body, "ItemsPath") if ql == JSONPATH else None,
        items=items,
        items_text=items_text,
        item_selector=item_selector,
        max_concurrency=_number_field(body, "MaxConcurrency"),
        tolerated_failure_count=_number_field(body, "ToleratedFailureCount"),
        tolerated_failure_percentage=_number_field(body, "ToleratedFailurePercentage"),
        item_batcher=(
            ItemBatcher(
                batcher.get("MaxItemsPerBatch"), batcher.get("BatchInput"), "BatchInput" in batcher
            )
            if batcher is not None
            else None
        ),
        retry=_retriers(body),
        catch=_catchers(body, ql),
    )


def _io(body: dict[str, Any], ql: str) -> IO:
    if ql == JSONPATH:
        return PathIO(
            input_path=_opt_path(body, "InputPath"),
            output_path=_opt_path(body, "OutputPath"),
            result_path=_opt_path(body, "ResultPath"),
            parameters=compile_template(body["Parameters"]) if "Parameters" in body else None,
            result_selector=(
                compile_template(body["ResultSelector"]) if "ResultSelector" in body else None
            ),
            assign=compile_template(body["Assign"]) if "Assign" in body else None,
        )
    return JsonataIO(
        arguments=_jsonata_field(body, "Arguments"),
        output=_jsonata_field(body, "Output"),
        assign=_jsonata_field(body, "Assign"),
    )


def _opt_path(body: dict[str, Any], key: str) -> JsonPath | None:
    """A path field whose absence means "$" and whose null means "nothing"."""
    if key not in body:
        return _ROOT
    value = body[key]
    return None if value is None else compile_path(value)


def _path(body: dict[str, Any], key: str) -> JsonPath | None:
    value = body.get(key)
    return compile_path(value) if isinstance(value, str) else None


def _jsonata_field(body: dict[str, Any], key: str) -> JsonataTemplate | None:
    """A field that may hold a JSONata expression (or a constant), None when absent."""
    if key not in body:
        return None
    return jsonata.compile_jsonata_template(body[key], key)


def _assign(value: Any, ql: str) -> AnyTemplate:
    if ql == JSONPATH:
        return compile_template(value)
    return jsonata.compile_jsonata_template(value, "Assign")


def _choice(c: Any, ql: str, path: str) -> ChoiceBranch:
    compiled = compile_choice(c, path)
    condition = None
    if compiled.condition is not None:
        condition = jsonata.compile_jsonata_template(compiled.condition, "Condition")
    return ChoiceBranch(
        rule=compiled.rule,
        condition=condition,
        next=compiled.next,
        assign=_assign(compiled.assign, ql) if compiled.assign is not None else None,
        output=(
            jsonata.compile_jsonata_template(compiled.output, "Output")
            if compiled.has_output
            else None
        ),
    )


def _fail_path(field: str, value: Any) -> FieldExpression | None:
    """ErrorPath / CausePath: a JSONPath or an intrinsic call, named by its field, so that
    a path that selects nothing says "specified for the field 'ErrorPath'" as AWS does."""
    if value is None:
        return None
    return compile_field(field, value)


def _number_field(body: dict[str, Any], key: str) -> NumberField | None:
    if key in body:
        value = body[key]
        if isinstance(value, str):
            return jsonata.compile_jsonata_template(value, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            # The validator refuses these; a hole there is a 422, never a 500.
            raise TypeError(f"{key} must be a number")
        return value
    path_key = key + "Path"
    if path_key in body:
        return compile_path(body[path_key])
    return None


def _retriers(body: dict[str, Any]) -> tuple[Retrier, ...]:
    return tuple(
        Retrier(
            error_equals=tuple(r["ErrorEquals"]),
            interval_seconds=float(r.get("IntervalSeconds", 1)),
            max_attempts=int(r.get("MaxAttempts", 3)),
            backoff_rate=float(r.get("BackoffRate", 2.0)),
            max_delay_seconds=r.get("MaxDelaySeconds"),
            jitter=r.get("JitterStrategy", "NONE"),
        )
        for r in body.get("Retry", ())
    )


def _catchers(body: dict[str, Any], ql: str) -> tuple[Catcher, ...]:
    return tuple(_catcher(c, ql) for c in body.get("Catch", ()))


def _catcher(c: dict[str, Any], ql: str) -> Catcher:
    assign = _assign(c["Assign"], ql) if "Assign" in c else None
    if ql == JSONPATH:
        return Catcher(tuple(c["ErrorEquals"]), c["Next"], _opt_path(c, "ResultPath"), assign)
    return Catcher(tuple(c["ErrorEquals"]), c["Next"], None, assign, _jsonata_field(c, "Output"))
