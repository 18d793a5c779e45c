"""A compiled ASL definition: every path, template, intrinsic, JSONata expression
and Choice rule parsed once, when the definition is registered.

``compile_definition(doc)`` validates first (``engine.core.asl.validate``) and raises
``InvalidDefinition`` listing every (json path, message); a valid document always
compiles. The engine then reads only these objects, never the raw document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.core.asl import jsonata
from engine.core.asl.choice import CompiledChoice, compile_choice
from engine.core.asl.jsonpath import JsonPath, compile_path
from engine.core.asl.payload import Template, compile_template
from engine.core.asl.validate import json_path_key, validate_definition
from engine.errors import InvalidDefinition

JSONPATH = "JSONPath"
JSONATA = "JSONata"


@dataclass(frozen=True, slots=True)
class Retrier:
    error_equals: tuple[str, ...]
    interval_seconds: float = 1.0
    max_attempts: int = 3
    backoff_rate: float = 2.0
    max_delay_seconds: float | None = None
    jitter: str = "NONE"


@dataclass(frozen=True, slots=True)
class Catcher:
    error_equals: tuple[str, ...]
    next: str
    # JSONPath: where the error output goes (None = discard, keep the input).
    result_path: JsonPath | None
    assign: Any = None  # Template (JSONPath) or JSONata template
    output: Any = None  # JSONata template
    has_output: bool = False


@dataclass(slots=True)
class StateDef:
    name: str
    type: str
    query_language: str
    next: str | None = None
    end: bool = False
    # JSONPath data flow. None means the field was null.
    input_path: JsonPath | None = None
    output_path: JsonPath | None = None
    result_path: JsonPath | None = None
    parameters: Template | None = None
    result_selector: Template | None = None
    result: Any = None
    has_result: bool = False
    # JSONata data flow (compiled templates, see engine.core.asl.jsonata).
    arguments: Any = None
    has_arguments: bool = False
    output: Any = None
    has_output: bool = False
    assign: Any = None
    has_assign: bool = False
    retry: tuple[Retrier, ...] = ()
    catch: tuple[Catcher, ...] = ()
    # Task
    resource: str = ""
    # A number, a compiled JsonPath (the *Path variant) or a JSONata template.
    timeout_seconds: Any = None
    heartbeat_seconds: Any = None
    # Choice
    choices: tuple[CompiledChoice, ...] = ()
    choice_conditions: tuple[Any, ...] = ()  # compiled JSONata conditions, by choice index
    default: str | None = None
    # Wait
    seconds: Any = None
    seconds_path: JsonPath | None = None
    timestamp: Any = None
    timestamp_path: JsonPath | None = None
    # Fail
    error: Any = None
    error_path: Any = None
    cause: Any = None
    cause_path: Any = None
    # Parallel
    branches: tuple[Machine, ...] = ()
    # Map
    processor: Machine | None = None
    items_path: JsonPath | None = None
    items: Any = None  # JSONata Items
    items_text: str = ""  # the Items expression as AWS quotes it in errors
    mode: str = "INLINE"  # ProcessorConfig.Mode ("DISTRIBUTED")
    item_selector: Any = None  # Template or JSONata template
    has_item_selector: bool = False
    # Each of these is a number, a compiled JsonPath (the *Path variant) or a
    # JSONata template.
    max_concurrency: Any = None
    tolerated_failure_count: Any = None
    tolerated_failure_percentage: Any = None
    item_batcher: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Machine:
    start_at: str
    states: dict[str, StateDef]
    query_language: str = JSONPATH


@dataclass(slots=True)
class Definition:
    machine: Machine
    timeout_seconds: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def machine_at(self, scope: tuple[tuple[str, int], ...]) -> Machine:
        """The (sub-)machine reached by following (state name, branch index) pairs."""
        m = self.machine
        for state_name, index in scope:
            st = m.states[state_name]
            if st.type == "Parallel":
                m = st.branches[index]
            else:
                assert st.processor is not None
                m = st.processor
        return m


_ROOT = compile_path("$")


def compile_definition(doc: Any) -> Definition:
    errors = validate_definition(doc)
    if errors:
        raise InvalidDefinition([(e.path, e.message) for e in errors])
    assert isinstance(doc, dict)
    ql = doc.get("QueryLanguage", JSONPATH)
    timeout = doc.get("TimeoutSeconds")
    return Definition(machine=_machine(doc, ql, "$"), timeout_seconds=timeout, raw=doc)


def _machine(doc: dict[str, Any], parent_ql: str, path: str) -> Machine:
    ql = doc.get("QueryLanguage", parent_ql)
    states = {
        name: _compiled_state(name, body, ql, json_path_key(f"{path}.States", name))
        for name, body in doc["States"].items()
    }
    return Machine(start_at=doc["StartAt"], states=states, query_language=ql)


def _opt_path(body: dict[str, Any], key: str) -> JsonPath | None:
    """A path field whose absence means "$" and whose null means "nothing"."""
    if key not in body:
        return _ROOT
    value = body[key]
    return None if value is None else compile_path(value)


def _path(body: dict[str, Any], key: str) -> JsonPath | None:
    value = body.get(key)
    return compile_path(value) if isinstance(value, str) else None


def _jsonata_or_value(value: Any, field: str) -> Any:
    return jsonata.compile_jsonata_template(value, field)


def _compiled_state(name: str, body: dict[str, Any], ql: str, path: str) -> StateDef:
    """A state compiled; whatever the validator let through but a compiler refuses
    (an expression that does not parse, a ``.$`` value that is not a string) is
    reported like a validation error, with the state's path."""
    try:
        return _state(name, body, ql, path)
    except InvalidDefinition:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidDefinition([(path, str(exc))]) from None


def _state(name: str, body: dict[str, Any], parent_ql: str, path: str) -> StateDef:
    ql = body.get("QueryLanguage", parent_ql)
    t = body["Type"]
    st = StateDef(
        name=name,
        type=t,
        query_language=ql,
        next=body.get("Next"),
        end=bool(body.get("End", False)),
        raw=body,
    )
    if ql == JSONPATH:
        st.input_path = _opt_path(body, "InputPath")
        st.output_path = _opt_path(body, "OutputPath")
        st.result_path = _opt_path(body, "ResultPath")
        if "Parameters" in body:
            st.parameters = compile_template(body["Parameters"])
        if "ResultSelector" in body:
            st.result_selector = compile_template(body["ResultSelector"])
        if "Assign" in body:
            st.assign, st.has_assign = compile_template(body["Assign"]), True
    else:
        if "Arguments" in body:
            st.arguments, st.has_arguments = _jsonata_or_value(body["Arguments"], "Arguments"), True
        if "Output" in body:
            st.output, st.has_output = _jsonata_or_value(body["Output"], "Output"), True
        if "Assign" in body:
            st.assign, st.has_assign = _jsonata_or_value(body["Assign"], "Assign"), True
    if "Result" in body:
        st.result, st.has_result = body["Result"], True
    st.retry = tuple(
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
    st.catch = tuple(_catcher(c, ql) for c in body.get("Catch", ()))
    if t == "Task":
        st.resource = body["Resource"]
        st.timeout_seconds = _number_field(body, "TimeoutSeconds", ql)
        st.heartbeat_seconds = _number_field(body, "HeartbeatSeconds", ql)
    elif t == "Choice":
        st.choices = tuple(
            compile_choice(c, f"$.States.{name}.Choices[{i}]")
            for i, c in enumerate(body["Choices"])
        )
        st.choice_conditions = tuple(
            _jsonata_or_value(c.condition, "Condition") if c.condition is not None else None
            for c in st.choices
        )
        st.choices = tuple(
            c if c.assign is None and not c.has_output else _with_assign(c, ql) for c in st.choices
        )
        st.default = body.get("Default")
    elif t == "Wait":
        st.seconds = _jsonata_or_value(body["Seconds"], "Seconds") if "Seconds" in body else None
        st.seconds_path = _path(body, "SecondsPath")
        st.timestamp = (
            _jsonata_or_value(body["Timestamp"], "Timestamp") if "Timestamp" in body else None
        )
        st.timestamp_path = _path(body, "TimestampPath")
    elif t == "Fail":
        st.error = _jsonata_or_value(body["Error"], "Error") if "Error" in body else None
        st.cause = _jsonata_or_value(body["Cause"], "Cause") if "Cause" in body else None
        st.error_path = _fail_path(body.get("ErrorPath"))
        st.cause_path = _fail_path(body.get("CausePath"))
    elif t == "Parallel":
        st.branches = tuple(
            _machine(b, ql, f"{path}.Branches[{i}]") for i, b in enumerate(body["Branches"])
        )
    elif t == "Map":
        proc = body.get("ItemProcessor") or body.get("Iterator")
        assert isinstance(proc, dict)
        field = "ItemProcessor" if "ItemProcessor" in body else "Iterator"
        st.processor = _machine(proc, ql, f"{path}.{field}")
        st.items_path = _opt_path(body, "ItemsPath") if ql == JSONPATH else None
        if "Items" in body:
            st.items = _jsonata_or_value(body["Items"], "Items")
            raw_items = body["Items"]
            st.items_text = (
                raw_items[2:-2].strip() if jsonata.is_jsonata(raw_items) else json.dumps(raw_items)
            )
        config = proc.get("ProcessorConfig") or {}
        st.mode = str(config.get("Mode", "INLINE"))
        selector = body.get("ItemSelector", body.get("Parameters"))
        if selector is not None or "ItemSelector" in body:
            st.has_item_selector = True
            st.item_selector = (
                compile_template(selector)
                if ql == JSONPATH
                else _jsonata_or_value(selector, "ItemSelector")
            )
        st.max_concurrency = _number_field(body, "MaxConcurrency", ql)
        st.tolerated_failure_count = _number_field(body, "ToleratedFailureCount", ql)
        st.tolerated_failure_percentage = _number_field(body, "ToleratedFailurePercentage", ql)
        st.item_batcher = body.get("ItemBatcher")
    return st


def _with_assign(c: CompiledChoice, ql: str) -> CompiledChoice:
    assign: Any = None
    if c.assign is not None:
        assign = (
            compile_template(c.assign) if ql == JSONPATH else _jsonata_or_value(c.assign, "Assign")
        )
    output = _jsonata_or_value(c.output, "Output") if c.has_output else None
    return CompiledChoice(
        rule=c.rule,
        next=c.next,
        condition=c.condition,
        assign=assign,
        output=output,
        has_output=c.has_output,
    )


def _fail_path(value: Any) -> Any:
    """ErrorPath / CausePath: a JSONPath or an intrinsic call (both compile as templates)."""
    if value is None:
        return None
    return compile_template({"v.$": value})


def _number_field(body: dict[str, Any], key: str, ql: str) -> Any:
    if key in body:
        value = body[key]
        return _jsonata_or_value(value, key) if isinstance(value, str) else value
    path_key = key + "Path"
    if path_key in body:
        return compile_path(body[path_key])
    return None


def _catcher(c: dict[str, Any], ql: str) -> Catcher:
    if ql == JSONPATH:
        rp = _opt_path(c, "ResultPath")
        assign = compile_template(c["Assign"]) if "Assign" in c else None
        return Catcher(tuple(c["ErrorEquals"]), c["Next"], rp, assign)
    return Catcher(
        tuple(c["ErrorEquals"]),
        c["Next"],
        None,
        _jsonata_or_value(c["Assign"], "Assign") if "Assign" in c else None,
        _jsonata_or_value(c["Output"], "Output") if "Output" in c else None,
        "Output" in c,
    )
