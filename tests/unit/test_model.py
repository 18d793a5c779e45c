"""compile_definition: what the validator lets through but a compiler refuses is an
InvalidDefinition with the state's path, never another exception (the API's 422)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.asl.compile import compile_definition
from engine.core.asl.jsonata import JsonataTemplate
from engine.core.asl.jsonpath import JsonPath
from engine.core.asl.model import (
    FailState,
    JsonataIO,
    MapState,
    ParallelState,
    PassState,
    PathIO,
    SucceedState,
    TaskState,
)
from engine.errors import InvalidDefinition


def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidDefinition) as caught:
        compile_definition(doc)
    return caught.value.errors


def test_a_type_that_is_not_a_string_is_invalid() -> None:
    errors = _errors({"StartAt": "A", "States": {"A": {"Type": [], "End": True}}})
    assert [path for path, _ in errors] == ["$.States.A.Type"]


def test_an_assign_path_that_is_not_a_string_is_invalid() -> None:
    doc = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Assign": {"x.$": 5}, "End": True}}}
    (error,) = _errors(doc)
    assert error[0] == "$.States.A"
    assert "x.$" in error[1]


def test_an_empty_jsonata_expression_is_invalid() -> None:
    doc = {
        "QueryLanguage": "JSONata",
        "StartAt": "A",
        "States": {"A": {"Type": "Pass", "Output": "{% %}", "End": True}},
    }
    (error,) = _errors(doc)
    assert error[0] == "$.States.A"


def test_errors_in_a_nested_state_name_its_branch() -> None:
    inner = {"StartAt": "B", "States": {"B": {"Type": "Pass", "Assign": {"y.$": 1}, "End": True}}}
    doc = {"StartAt": "P", "States": {"P": {"Type": "Parallel", "Branches": [inner], "End": True}}}
    (error,) = _errors(doc)
    assert error[0] == "$.States.P.Branches[0].States.B"


def test_each_state_compiles_to_its_kind_with_its_query_language() -> None:
    doc = {
        "StartAt": "P",
        "States": {
            "P": {"Type": "Pass", "Result": None, "Next": "T"},
            "T": {
                "Type": "Task",
                "Resource": "test:echo",
                "TimeoutSecondsPath": "$.t",
                "Next": "M",
            },
            "M": {
                "Type": "Map",
                "QueryLanguage": "JSONata",
                "MaxConcurrency": "{% 2 %}",
                "ItemProcessor": {"StartAt": "S", "States": {"S": {"Type": "Succeed"}}},
                "Next": "F",
            },
            "F": {"Type": "Fail", "Error": "E"},
        },
    }
    states = compile_definition(doc).machine.states
    p, t, m, f = states["P"], states["T"], states["M"], states["F"]
    assert isinstance(p, PassState) and p.has_result and p.result is None
    assert isinstance(p.io, PathIO)
    assert isinstance(t, TaskState) and isinstance(t.timeout_seconds, JsonPath)
    assert isinstance(m, MapState) and isinstance(m.io, JsonataIO)
    assert isinstance(m.max_concurrency, JsonataTemplate)
    assert isinstance(m.processor.states["S"], SucceedState)
    assert isinstance(f, FailState) and not f.jsonata


def test_machine_at_follows_parallel_branches_and_map_processors() -> None:
    first = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}
    leaf = {"StartAt": "L", "States": {"L": {"Type": "Pass", "End": True}}}
    mapped = {"Type": "Map", "ItemProcessor": leaf, "End": True}
    branch = {"StartAt": "M", "States": {"M": mapped}}
    doc = {
        "StartAt": "P",
        "States": {"P": {"Type": "Parallel", "Branches": [first, branch], "End": True}},
    }
    definition = compile_definition(doc)
    inner = definition.machine_at((("P", 1), ("M", 0)))
    assert isinstance(definition.machine.states["P"], ParallelState)
    assert inner.start_at == "L" and isinstance(inner.states["L"], PassState)
