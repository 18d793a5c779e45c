"""compile_definition: what the validator lets through but a compiler refuses is an
InvalidDefinition with the state's path, never another exception (the API's 422)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.asl.compile import compile_definition
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
