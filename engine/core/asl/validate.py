"""Validation of Amazon States Language definitions, as AWS does at creation.

Contract
--------
`validate_definition(doc)` returns every problem it finds in `doc` (a decoded
JSON value) as `ValidationError(path, message)`, in document order; an empty
list means the definition is valid. It never raises on bad input and does no
I/O. `path` is a JSONPath-like location of the offending value, e.g.
`$.States.Approve.Next`, `$.States['My state'].Retry[0].BackoffRate`, or
`$.States.P.Branches[0].States.X` for nested machines.

Checked (each is an error AWS reports as well):
- top level: an object with `StartAt` (string naming a state) and `States`
  (non-empty object); `Comment`, `Version`, `TimeoutSeconds`, `QueryLanguage`;
  nested machines (Parallel `Branches`, Map `ItemProcessor`/`Iterator`) alike.
- per state: a known `Type`; only the fields that type allows in its query
  language; required fields; field types and ranges; state names of at most
  80 characters, unique across the whole machine.
- transitions: every `Next`, `Default` and `Catch[].Next` names a state of the
  same scope; non-terminal states have exactly one of `Next` or `End: true`;
  Choice, Succeed and Fail have neither; every state is reachable from
  `StartAt` within its scope.
- Retry/Catch: non-empty `ErrorEquals` of strings; `States.ALL` alone and only
  in the last retrier/catcher; retrier field ranges.
- paths (`InputPath`, `OutputPath`, `ResultPath`, `ItemsPath`, `*Path`) compile
  as JSONPath (`ResultPath` and `*Path` as reference paths); `.$` keys of
  payload templates hold a path or an intrinsic function call.
- QueryLanguage: JSONata states reject JSONPath-only fields and JSONPath
  states reject JSONata-only fields; a JSONPath state inside a JSONata
  machine is an error.
- Choice rules are checked by `engine.core.asl.choice.check_choice`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from engine.core.asl.choice import check_choice, parse_timestamp
from engine.core.asl.intrinsics import IntrinsicSyntaxError, compile_intrinsic, is_intrinsic
from engine.core.asl.jsonpath import PathSyntaxError, compile_path

__all__ = ["ValidationError", "validate_definition"]


class ValidationError(msgspec.Struct, frozen=True):
    """One problem in a definition: where (`path`) and what (`message`)."""

    path: str
    message: str


JSONPATH: Final = "JSONPath"
JSONATA: Final = "JSONata"
MAX_STATE_NAME: Final = 80
STATES_ALL: Final = "States.ALL"

_TOP_FIELDS: Final = frozenset(
    {"Comment", "StartAt", "States", "Version", "TimeoutSeconds", "QueryLanguage"}
)
_BRANCH_FIELDS: Final = frozenset({"Comment", "StartAt", "States"})
_PROCESSOR_FIELDS: Final = frozenset({"Comment", "StartAt", "States", "ProcessorConfig"})

_COMMON: Final = frozenset({"Type", "Comment", "QueryLanguage"})
_FLOW: Final = frozenset({"Next", "End"})
_IO: Final = frozenset({"InputPath", "OutputPath", "Output"})
_RESULT: Final = frozenset({"ResultPath", "ResultSelector"})
_ERRORS: Final = frozenset({"Retry", "Catch"})

_STATE_FIELDS: Final[dict[str, frozenset[str]]] = {
    "Pass": _COMMON | _FLOW | _IO | {"Result", "ResultPath", "Parameters", "Assign"},
    "Task": _COMMON
    | _FLOW
    | _IO
    | _RESULT
    | _ERRORS
    | {
        "Resource",
        "Parameters",
        "Arguments",
        "Assign",
        "Credentials",
        "TimeoutSeconds",
        "TimeoutSecondsPath",
        "HeartbeatSeconds",
        "HeartbeatSecondsPath",
    },
    "Choice": _COMMON | _IO | {"Choices", "Default", "Assign"},
    "Wait": _COMMON
    | _FLOW
    | _IO
    | {"Seconds", "SecondsPath", "Timestamp", "TimestampPath", "Assign"},
    "Succeed": _COMMON | _IO,
    "Fail": _COMMON | {"Error", "ErrorPath", "Cause", "CausePath"},
    "Parallel": _COMMON
    | _FLOW
    | _IO
    | _RESULT
    | _ERRORS
    | {"Branches", "Parameters", "Arguments", "Assign"},
    "Map": _COMMON
    | _FLOW
    | _IO
    | _RESULT
    | _ERRORS
    | {
        "ItemProcessor",
        "Iterator",
        "ItemsPath",
        "Items",
        "ItemSelector",
        "Parameters",
        "ItemReader",
        "ItemBatcher",
        "ResultWriter",
        "Label",
        "Assign",
        "MaxConcurrency",
        "MaxConcurrencyPath",
        "ToleratedFailurePercentage",
        "ToleratedFailurePercentagePath",
        "ToleratedFailureCount",
        "ToleratedFailureCountPath",
    },
}
_TERMINAL_TYPES: Final = frozenset({"Choice", "Succeed", "Fail"})

# Fields that only one query language accepts.
_JSONPATH_ONLY: Final = frozenset(
    {
        "InputPath",
        "OutputPath",
        "Parameters",
        "ResultSelector",
        "ResultPath",
        "ItemsPath",
        "SecondsPath",
        "TimestampPath",
        "TimeoutSecondsPath",
        "HeartbeatSecondsPath",
        "MaxConcurrencyPath",
        "ToleratedFailurePercentagePath",
        "ToleratedFailureCountPath",
        "ErrorPath",
        "CausePath",
    }
)
_JSONATA_ONLY: Final = frozenset({"Arguments", "Output", "Items"})

_RETRIER_FIELDS: Final = frozenset(
    {
        "ErrorEquals",
        "IntervalSeconds",
        "MaxAttempts",
        "BackoffRate",
        "MaxDelaySeconds",
        "JitterStrategy",
        "Comment",
    }
)
_CATCHER_FIELDS: Final = frozenset(
    {"ErrorEquals", "Next", "ResultPath", "Comment", "Assign", "Output"}
)


def json_path_key(path: str, key: str) -> str:
    """`path.key`, or `path['key']` when the key is not a plain identifier."""
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_jsonata(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("{%")
        and value.endswith("%}")
        and len(value) >= 4
    )


class _Validator:
    def __init__(self) -> None:
        self.errors: list[ValidationError] = []
        self.names: dict[str, str] = {}  # state name -> path of first definition

    def fail(self, path: str, message: str) -> None:
        self.errors.append(ValidationError(path, message))

    # ------------------------------------------------------------ machines

    def machine(self, doc: Any, path: str, allowed: frozenset[str], language: str) -> None:
        if not isinstance(doc, dict):
            self.fail(path, "a state machine must be a JSON object")
            return
        for field in doc:
            if field not in allowed:
                self.fail(json_path_key(path, field), f"unknown field {field!r}")
        if path == "$":
            language = self.top_level(doc, language)
        start = doc.get("StartAt")
        states = doc.get("States")
        if not isinstance(start, str):
            self.fail(json_path_key(path, "StartAt"), "StartAt is required and must be a string")
        if not isinstance(states, dict) or not states:
            self.fail(
                json_path_key(path, "States"), "States is required and must be a non-empty object"
            )
            return
        states_path = json_path_key(path, "States")
        for name, state in states.items():
            self.state(name, state, json_path_key(states_path, name), states, language)
        if isinstance(start, str):
            if start not in states:
                self.fail(json_path_key(path, "StartAt"), f"StartAt names no state: {start!r}")
            else:
                self.reachability(start, states, states_path)

    def top_level(self, doc: dict[str, Any], language: str) -> str:
        if "Version" in doc and doc["Version"] != "1.0":
            self.fail("$.Version", 'Version must be "1.0"')
        if "TimeoutSeconds" in doc:
            self.positive_int(doc["TimeoutSeconds"], "$.TimeoutSeconds")
        if "Comment" in doc and not isinstance(doc["Comment"], str):
            self.fail("$.Comment", "Comment must be a string")
        if "QueryLanguage" in doc:
            ql = doc["QueryLanguage"]
            if ql not in (JSONPATH, JSONATA):
                self.fail("$.QueryLanguage", 'QueryLanguage must be "JSONPath" or "JSONata"')
            else:
                return str(ql)
        return language

    def reachability(self, start: str, states: dict[str, Any], states_path: str) -> None:
        seen = {start}
        todo = [start]
        while todo:
            state = states.get(todo.pop())
            for target in _transitions(state):
                if target in states and target not in seen:
                    seen.add(target)
                    todo.append(target)
        for name in states:
            if name not in seen:
                self.fail(
                    json_path_key(states_path, name),
                    f"state {name!r} is not reachable from StartAt",
                )

    # -------------------------------------------------------------- states

    def state(
        self, name: str, state: Any, path: str, scope: dict[str, Any], machine_language: str
    ) -> None:
        if len(name) > MAX_STATE_NAME:
            self.fail(path, f"state name is longer than {MAX_STATE_NAME} characters")
        if not name:
            self.fail(path, "state name must not be empty")
        if name in self.names:
            self.fail(path, f"duplicate state name {name!r} (also at {self.names[name]})")
        else:
            self.names[name] = path
        if not isinstance(state, dict):
            self.fail(path, "a state must be a JSON object")
            return
        kind = state.get("Type")
        if not isinstance(kind, str) or kind not in _STATE_FIELDS:
            self.fail(
                json_path_key(path, "Type"),
                f"Type must be one of {', '.join(sorted(_STATE_FIELDS))}",
            )
            return
        language = self.state_language(state, path, machine_language)
        allowed = _STATE_FIELDS[kind]
        for field in state:
            where = json_path_key(path, field)
            if field not in allowed:
                self.fail(where, f"field {field!r} is not allowed in a {kind} state")
            elif language == JSONATA and field in _JSONPATH_ONLY:
                self.fail(where, f"field {field!r} is not supported with QueryLanguage JSONata")
            elif language == JSONPATH and field in _JSONATA_ONLY:
                self.fail(where, f"field {field!r} requires QueryLanguage JSONata")
        if "Comment" in state and not isinstance(state["Comment"], str):
            self.fail(json_path_key(path, "Comment"), "Comment must be a string")
        self.transitions(kind, state, path, scope)
        self.paths(state, path, language)
        if kind == "Task":
            self.task(state, path, language)
        elif kind == "Choice":
            self.choice(state, path, scope, language)
        elif kind == "Wait":
            self.wait(state, path, language)
        elif kind == "Fail":
            self.fail_state(state, path, language)
        elif kind == "Parallel":
            self.parallel(state, path, language)
        elif kind == "Map":
            self.map(state, path, language)
        for field in ("Parameters", "ResultSelector", "ItemSelector"):
            if field in state and language == JSONPATH:
                self.template(state[field], json_path_key(path, field))
        for field in ("Retry", "Catch"):
            if field in state:
                self.handlers(field, state[field], json_path_key(path, field), scope, language)

    def state_language(self, state: dict[str, Any], path: str, machine_language: str) -> str:
        if "QueryLanguage" not in state:
            return machine_language
        ql = state["QueryLanguage"]
        where = json_path_key(path, "QueryLanguage")
        if ql not in (JSONPATH, JSONATA):
            self.fail(where, 'QueryLanguage must be "JSONPath" or "JSONata"')
            return machine_language
        if machine_language == JSONATA and ql == JSONPATH:
            self.fail(where, "a JSONPath state is not allowed in a JSONata state machine")
        return str(ql)

    def transitions(
        self, kind: str, state: dict[str, Any], path: str, scope: dict[str, Any]
    ) -> None:
        has_next = "Next" in state
        end = state.get("End")
        if "End" in state and not isinstance(end, bool):
            self.fail(json_path_key(path, "End"), "End must be a boolean")
        if kind in _TERMINAL_TYPES:
            return  # Next/End are not in the allowed fields: reported as unknown
        if has_next and end is True:
            self.fail(path, "a state must not have both Next and End")
        elif not has_next and end is not True:
            self.fail(path, "a state must have Next or End: true")
        if has_next:
            self.target(state["Next"], json_path_key(path, "Next"), scope)

    def target(self, name: Any, path: str, scope: dict[str, Any]) -> None:
        if not isinstance(name, str):
            self.fail(path, "must be a state name (string)")
        elif name not in scope:
            self.fail(path, f"names no state in this scope: {name!r}")

    # ------------------------------------------------------- field checks

    def positive_int(self, value: Any, path: str, language: str = JSONPATH) -> None:
        if language == JSONATA and _is_jsonata(value):
            return
        if not _is_int(value) or value < 1:
            self.fail(path, "must be a positive integer")

    def non_negative_int(self, value: Any, path: str, language: str = JSONPATH) -> None:
        if language == JSONATA and _is_jsonata(value):
            return
        if not _is_int(value) or value < 0:
            self.fail(path, "must be a non-negative integer")

    def path_field(self, value: Any, path: str, *, reference: str | None, nullable: bool) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, str):
            self.fail(path, "must be a JSONPath string" + (" or null" if nullable else ""))
            return
        try:
            compiled = compile_path(value)
        except PathSyntaxError as e:
            self.fail(path, f"invalid JSONPath {value!r}: {e}")
            return
        if reference == "result" and not compiled.is_reference:
            self.fail(path, f"must be a reference path into the state input: {value!r}")
        elif reference == "definite" and not compiled.is_definite:
            self.fail(
                path, f"must be a reference path (no filters, wildcards or slices): {value!r}"
            )

    def path_or_intrinsic(self, value: Any, path: str) -> None:
        if isinstance(value, str) and is_intrinsic(value):
            self.intrinsic(value, path)
        else:
            self.path_field(value, path, reference=None, nullable=False)

    def intrinsic(self, text: str, path: str) -> None:
        try:
            compile_intrinsic(text)
        except IntrinsicSyntaxError as e:
            self.fail(path, f"invalid intrinsic function {text!r}: {e}")

    def paths(self, state: dict[str, Any], path: str, language: str) -> None:
        if language != JSONPATH:
            return  # JSONPath-only fields are already reported for JSONata states
        for field in ("InputPath", "OutputPath"):
            if field in state:
                self.path_field(
                    state[field], json_path_key(path, field), reference=None, nullable=True
                )
        if "ResultPath" in state:
            self.path_field(
                state["ResultPath"],
                json_path_key(path, "ResultPath"),
                reference="result",
                nullable=True,
            )
        for field in (
            "ItemsPath",
            "SecondsPath",
            "TimestampPath",
            "TimeoutSecondsPath",
            "HeartbeatSecondsPath",
            "MaxConcurrencyPath",
            "ToleratedFailurePercentagePath",
            "ToleratedFailureCountPath",
        ):
            if field in state:
                self.path_field(
                    state[field], json_path_key(path, field), reference="definite", nullable=False
                )
        for field in ("ErrorPath", "CausePath"):
            if field in state:
                self.path_or_intrinsic(state[field], json_path_key(path, field))

    def template(self, value: Any, path: str) -> None:
        """A Parameters-like payload: every `.$` key holds a path or an intrinsic call."""
        if isinstance(value, dict):
            for key, item in value.items():
                where = json_path_key(path, key)
                if key.endswith(".$"):
                    if not isinstance(item, str):
                        self.fail(
                            where,
                            "a field ending in .$ must hold a path or intrinsic function string",
                        )
                    else:
                        self.path_or_intrinsic(item, where)
                else:
                    self.template(item, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.template(item, f"{path}[{i}]")

    def exclusive(
        self, state: dict[str, Any], path: str, fields: Iterable[str], required: bool
    ) -> None:
        present = [f for f in fields if f in state]
        names = " / ".join(fields)
        if len(present) > 1:
            self.fail(path, f"only one of {names} may be given, found {', '.join(present)}")
        elif required and not present:
            self.fail(path, f"exactly one of {names} is required")

    # ----------------------------------------------------- per state type

    def task(self, state: dict[str, Any], path: str, language: str) -> None:
        resource = state.get("Resource")
        if not isinstance(resource, str) or not resource:
            self.fail(
                json_path_key(path, "Resource"),
                "Task Resource is required and must be a non-empty string",
            )
        self.exclusive(state, path, ("TimeoutSeconds", "TimeoutSecondsPath"), required=False)
        self.exclusive(state, path, ("HeartbeatSeconds", "HeartbeatSecondsPath"), required=False)
        timeout, heartbeat = state.get("TimeoutSeconds"), state.get("HeartbeatSeconds")
        if "TimeoutSeconds" in state:
            self.positive_int(timeout, json_path_key(path, "TimeoutSeconds"), language)
        if "HeartbeatSeconds" in state:
            self.positive_int(heartbeat, json_path_key(path, "HeartbeatSeconds"), language)
            if isinstance(timeout, int) and isinstance(heartbeat, int) and heartbeat >= timeout:
                self.fail(
                    json_path_key(path, "HeartbeatSeconds"),
                    "HeartbeatSeconds must be smaller than TimeoutSeconds",
                )
        if "Arguments" in state and language == JSONATA:
            args = state["Arguments"]
            if not isinstance(args, dict) and not _is_jsonata(args):
                self.fail(
                    json_path_key(path, "Arguments"),
                    "Arguments must be an object or a JSONata expression",
                )

    def choice(
        self, state: dict[str, Any], path: str, scope: dict[str, Any], language: str
    ) -> None:
        choices = state.get("Choices")
        where = json_path_key(path, "Choices")
        if not isinstance(choices, list) or not choices:
            self.fail(where, "Choices is required and must be a non-empty array")
            choices = []
        for i, rule in enumerate(choices):
            rule_path = f"{where}[{i}]"
            for err_path, message in check_choice(rule, rule_path):
                self.fail(err_path, message)
            if not isinstance(rule, dict):
                continue
            if isinstance(rule.get("Next"), str):  # a missing Next is check_choice's report
                self.target(rule["Next"], json_path_key(rule_path, "Next"), scope)
            if language == JSONATA and "Condition" not in rule:
                self.fail(
                    json_path_key(rule_path, "Condition"),
                    "a JSONata choice rule requires Condition",
                )
            if language == JSONPATH:
                for field in ("Condition", "Output"):
                    if field in rule:
                        self.fail(
                            json_path_key(rule_path, field),
                            f"field {field!r} requires QueryLanguage JSONata",
                        )
        if "Default" in state:
            self.target(state["Default"], json_path_key(path, "Default"), scope)

    def wait(self, state: dict[str, Any], path: str, language: str) -> None:
        self.exclusive(
            state, path, ("Seconds", "SecondsPath", "Timestamp", "TimestampPath"), required=True
        )
        if "Seconds" in state:
            self.non_negative_int(state["Seconds"], json_path_key(path, "Seconds"), language)
        if "Timestamp" in state:
            ts = state["Timestamp"]
            if not (language == JSONATA and _is_jsonata(ts)):
                if not isinstance(ts, str) or parse_timestamp(ts) is None:
                    self.fail(
                        json_path_key(path, "Timestamp"),
                        "Timestamp must be an RFC 3339 timestamp string",
                    )

    def fail_state(self, state: dict[str, Any], path: str, language: str) -> None:
        self.exclusive(state, path, ("Error", "ErrorPath"), required=False)
        self.exclusive(state, path, ("Cause", "CausePath"), required=False)
        for field in ("Error", "Cause"):
            if field in state and not isinstance(state[field], str):
                self.fail(json_path_key(path, field), f"{field} must be a string")

    def parallel(self, state: dict[str, Any], path: str, language: str) -> None:
        branches = state.get("Branches")
        where = json_path_key(path, "Branches")
        if not isinstance(branches, list) or not branches:
            self.fail(where, "Branches is required and must be a non-empty array")
            return
        for i, branch in enumerate(branches):
            self.machine(branch, f"{where}[{i}]", _BRANCH_FIELDS, language)

    def map(self, state: dict[str, Any], path: str, language: str) -> None:
        self.exclusive(state, path, ("ItemProcessor", "Iterator"), required=True)
        self.exclusive(state, path, ("ItemSelector", "Parameters"), required=False)
        self.exclusive(state, path, ("MaxConcurrency", "MaxConcurrencyPath"), required=False)
        self.exclusive(
            state,
            path,
            ("ToleratedFailurePercentage", "ToleratedFailurePercentagePath"),
            required=False,
        )
        self.exclusive(
            state, path, ("ToleratedFailureCount", "ToleratedFailureCountPath"), required=False
        )
        for field in ("ItemProcessor", "Iterator"):
            if field in state:
                processor = state[field]
                self.machine(processor, json_path_key(path, field), _PROCESSOR_FIELDS, language)
                if isinstance(processor, dict) and "ProcessorConfig" in processor:
                    self.processor_config(
                        processor["ProcessorConfig"],
                        json_path_key(json_path_key(path, field), "ProcessorConfig"),
                    )
        if "MaxConcurrency" in state:
            self.non_negative_int(
                state["MaxConcurrency"], json_path_key(path, "MaxConcurrency"), language
            )
        if "ToleratedFailureCount" in state:
            self.non_negative_int(
                state["ToleratedFailureCount"],
                json_path_key(path, "ToleratedFailureCount"),
                language,
            )
        if "ToleratedFailurePercentage" in state:
            value = state["ToleratedFailurePercentage"]
            if not (language == JSONATA and _is_jsonata(value)) and (
                not _is_number(value) or not 0 <= value <= 100
            ):
                self.fail(
                    json_path_key(path, "ToleratedFailurePercentage"),
                    "must be a number between 0 and 100",
                )
        if "Label" in state:
            label = state["Label"]
            if not isinstance(label, str) or len(label) > 40:
                self.fail(
                    json_path_key(path, "Label"), "Label must be a string of at most 40 characters"
                )
        if "Items" in state and language == JSONATA:
            items = state["Items"]
            if not isinstance(items, list) and not _is_jsonata(items):
                self.fail(
                    json_path_key(path, "Items"), "Items must be an array or a JSONata expression"
                )

    def processor_config(self, config: Any, path: str) -> None:
        if not isinstance(config, dict):
            self.fail(path, "ProcessorConfig must be an object")
            return
        for field, value in config.items():
            where = json_path_key(path, field)
            if field == "Mode":
                if value not in ("INLINE", "DISTRIBUTED"):
                    self.fail(where, "Mode must be INLINE or DISTRIBUTED")
            elif field == "ExecutionType":
                if value not in ("STANDARD", "EXPRESS"):
                    self.fail(where, "ExecutionType must be STANDARD or EXPRESS")
            else:
                self.fail(where, f"unknown field {field!r}")

    # ------------------------------------------------------- Retry / Catch

    def handlers(
        self, field: str, value: Any, path: str, scope: dict[str, Any], language: str
    ) -> None:
        if not isinstance(value, list):
            self.fail(path, f"{field} must be an array")
            return
        for i, handler in enumerate(value):
            where = f"{path}[{i}]"
            if not isinstance(handler, dict):
                self.fail(where, f"each {field} entry must be an object")
                continue
            self.error_equals(handler, where, last=i == len(value) - 1)
            if field == "Retry":
                self.retrier(handler, where)
            else:
                self.catcher(handler, where, scope, language)

    def error_equals(self, handler: dict[str, Any], path: str, last: bool) -> None:
        errors = handler.get("ErrorEquals")
        where = json_path_key(path, "ErrorEquals")
        if not isinstance(errors, list) or not errors:
            self.fail(where, "ErrorEquals is required and must be a non-empty array")
            return
        for j, name in enumerate(errors):
            if not isinstance(name, str):
                self.fail(f"{where}[{j}]", "error names must be strings")
        if STATES_ALL in errors:
            if len(errors) > 1:
                self.fail(where, "States.ALL must appear alone in ErrorEquals")
            if not last:
                self.fail(where, "States.ALL must appear only in the last entry")

    def retrier(self, retrier: dict[str, Any], path: str) -> None:
        for field in retrier:
            if field not in _RETRIER_FIELDS:
                self.fail(json_path_key(path, field), f"unknown field {field!r} in a retrier")
        if "IntervalSeconds" in retrier:
            self.positive_int(retrier["IntervalSeconds"], json_path_key(path, "IntervalSeconds"))
        if "MaxDelaySeconds" in retrier:
            self.positive_int(retrier["MaxDelaySeconds"], json_path_key(path, "MaxDelaySeconds"))
        if "MaxAttempts" in retrier:
            self.non_negative_int(retrier["MaxAttempts"], json_path_key(path, "MaxAttempts"))
        if "BackoffRate" in retrier:
            rate = retrier["BackoffRate"]
            if not _is_number(rate) or rate < 1.0:
                self.fail(json_path_key(path, "BackoffRate"), "BackoffRate must be a number >= 1.0")
        if "JitterStrategy" in retrier and retrier["JitterStrategy"] not in ("FULL", "NONE"):
            self.fail(json_path_key(path, "JitterStrategy"), "JitterStrategy must be FULL or NONE")

    def catcher(
        self, catcher: dict[str, Any], path: str, scope: dict[str, Any], language: str
    ) -> None:
        for field in catcher:
            where = json_path_key(path, field)
            if field not in _CATCHER_FIELDS:
                self.fail(where, f"unknown field {field!r} in a catcher")
            elif language == JSONATA and field == "ResultPath":
                self.fail(where, "field 'ResultPath' is not supported with QueryLanguage JSONata")
            elif language == JSONPATH and field == "Output":
                self.fail(where, "field 'Output' requires QueryLanguage JSONata")
        if "Next" not in catcher:
            self.fail(json_path_key(path, "Next"), "a catcher requires Next")
        else:
            self.target(catcher["Next"], json_path_key(path, "Next"), scope)
        if "ResultPath" in catcher and language == JSONPATH:
            self.path_field(
                catcher["ResultPath"],
                json_path_key(path, "ResultPath"),
                reference="result",
                nullable=True,
            )


def _transitions(state: Any) -> list[str]:
    """Names a state can move to in its own scope (for reachability)."""
    if not isinstance(state, dict):
        return []
    targets: list[Any] = [state.get("Next"), state.get("Default")]
    choices = state.get("Choices")
    if isinstance(choices, list):
        targets += [c.get("Next") for c in choices if isinstance(c, dict)]
    catchers = state.get("Catch")
    if isinstance(catchers, list):
        targets += [c.get("Next") for c in catchers if isinstance(c, dict)]
    return [t for t in targets if isinstance(t, str)]


def validate_definition(doc: Any) -> list[ValidationError]:
    """Every problem of the ASL document `doc`; empty when AWS would accept it."""
    validator = _Validator()
    validator.machine(doc, "$", _TOP_FIELDS, JSONPATH)
    return validator.errors
