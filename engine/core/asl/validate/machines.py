"""State machines and their states: structure, names, types, allowed fields,
transitions and reachability; each state's own checks are dispatched from here."""

from __future__ import annotations

from typing import Any

from engine.core.asl.validate.choices import check_choices
from engine.core.asl.validate.fields import (
    JSONATA,
    JSONATA_ONLY,
    JSONPATH,
    JSONPATH_ONLY,
    MAX_STATE_NAME,
    STATE_FIELDS,
    TERMINAL_TYPES,
    TOP_FIELDS,
)
from engine.core.asl.validate.handlers import check_handlers
from engine.core.asl.validate.nested import check_map, check_parallel
from engine.core.asl.validate.paths import check_state_paths, check_template
from engine.core.asl.validate.report import Report, ValidationError, json_path_key
from engine.core.asl.validate.states import check_fail, check_task, check_wait


def check_machine(
    report: Report, doc: Any, path: str, allowed: frozenset[str], language: str
) -> None:
    """A state machine at `path` (the top level or a nested one) and all its states."""
    if not isinstance(doc, dict):
        report.fail(path, "a state machine must be a JSON object")
        return
    for field in doc:
        if field not in allowed:
            report.fail(json_path_key(path, field), f"unknown field {field!r}")
    if path == "$":
        language = _top_level(report, doc, language)
    start = doc.get("StartAt")
    states = doc.get("States")
    if not isinstance(start, str):
        report.fail(json_path_key(path, "StartAt"), "StartAt is required and must be a string")
    if not isinstance(states, dict) or not states:
        report.fail(
            json_path_key(path, "States"), "States is required and must be a non-empty object"
        )
        return
    states_path = json_path_key(path, "States")
    for name, state in states.items():
        _check_state(report, name, state, json_path_key(states_path, name), states, language)
    if isinstance(start, str):
        if start not in states:
            report.fail(json_path_key(path, "StartAt"), f"StartAt names no state: {start!r}")
        else:
            _reachability(report, start, states, states_path)


def _top_level(report: Report, doc: dict[str, Any], language: str) -> str:
    if "Version" in doc and doc["Version"] != "1.0":
        report.fail("$.Version", 'Version must be "1.0"')
    if "TimeoutSeconds" in doc:
        report.positive_int(doc["TimeoutSeconds"], "$.TimeoutSeconds")
    if "Comment" in doc and not isinstance(doc["Comment"], str):
        report.fail("$.Comment", "Comment must be a string")
    if "QueryLanguage" in doc:
        ql = doc["QueryLanguage"]
        if ql not in (JSONPATH, JSONATA):
            report.fail("$.QueryLanguage", 'QueryLanguage must be "JSONPath" or "JSONata"')
        else:
            return str(ql)
    return language


def _reachability(report: Report, start: str, states: dict[str, Any], states_path: str) -> None:
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
            report.fail(
                json_path_key(states_path, name),
                f"state {name!r} is not reachable from StartAt",
            )


def _check_state(
    report: Report, name: str, state: Any, path: str, scope: dict[str, Any], machine_language: str
) -> None:
    if len(name) > MAX_STATE_NAME:
        report.fail(path, f"state name is longer than {MAX_STATE_NAME} characters")
    if not name:
        report.fail(path, "state name must not be empty")
    if name in report.names:
        report.fail(path, f"duplicate state name {name!r} (also at {report.names[name]})")
    else:
        report.names[name] = path
    if not isinstance(state, dict):
        report.fail(path, "a state must be a JSON object")
        return
    kind = state.get("Type")
    if not isinstance(kind, str) or kind not in STATE_FIELDS:
        report.fail(
            json_path_key(path, "Type"),
            f"Type must be one of {', '.join(sorted(STATE_FIELDS))}",
        )
        return
    language = _state_language(report, state, path, machine_language)
    allowed = STATE_FIELDS[kind]
    for field in state:
        where = json_path_key(path, field)
        if field not in allowed:
            report.fail(where, f"field {field!r} is not allowed in a {kind} state")
        elif language == JSONATA and field in JSONPATH_ONLY:
            report.fail(where, f"field {field!r} is not supported with QueryLanguage JSONata")
        elif language == JSONPATH and field in JSONATA_ONLY:
            report.fail(where, f"field {field!r} requires QueryLanguage JSONata")
    if "Comment" in state and not isinstance(state["Comment"], str):
        report.fail(json_path_key(path, "Comment"), "Comment must be a string")
    _check_transitions(report, kind, state, path, scope)
    check_state_paths(report, state, path, language)
    if kind == "Task":
        check_task(report, state, path, language)
    elif kind == "Choice":
        check_choices(report, state, path, scope, language)
    elif kind == "Wait":
        check_wait(report, state, path, language)
    elif kind == "Fail":
        check_fail(report, state, path, language)
    elif kind == "Parallel":
        check_parallel(report, state, path, language, check_machine)
    elif kind == "Map":
        check_map(report, state, path, language, check_machine)
    for field in ("Parameters", "ResultSelector", "ItemSelector"):
        if field in state and language == JSONPATH:
            check_template(report, state[field], json_path_key(path, field))
    for field in ("Retry", "Catch"):
        if field in state:
            check_handlers(report, field, state[field], json_path_key(path, field), scope, language)


def _state_language(report: Report, state: dict[str, Any], path: str, machine_language: str) -> str:
    if "QueryLanguage" not in state:
        return machine_language
    ql = state["QueryLanguage"]
    where = json_path_key(path, "QueryLanguage")
    if ql not in (JSONPATH, JSONATA):
        report.fail(where, 'QueryLanguage must be "JSONPath" or "JSONata"')
        return machine_language
    if machine_language == JSONATA and ql == JSONPATH:
        report.fail(where, "a JSONPath state is not allowed in a JSONata state machine")
    return str(ql)


def _check_transitions(
    report: Report, kind: str, state: dict[str, Any], path: str, scope: dict[str, Any]
) -> None:
    has_next = "Next" in state
    end = state.get("End")
    if "End" in state and not isinstance(end, bool):
        report.fail(json_path_key(path, "End"), "End must be a boolean")
    if kind in TERMINAL_TYPES:
        return  # Next/End are not in the allowed fields: reported as unknown
    if has_next and end is True:
        report.fail(path, "a state must not have both Next and End")
    elif not has_next and end is not True:
        report.fail(path, "a state must have Next or End: true")
    if has_next:
        report.target(state["Next"], json_path_key(path, "Next"), scope)


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
    report = Report()
    check_machine(report, doc, "$", TOP_FIELDS, JSONPATH)
    return report.errors
