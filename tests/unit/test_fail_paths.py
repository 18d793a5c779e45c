"""A Fail state's ErrorPath and CausePath: what they select, and AWS's cause (naming
the field, as recorded in scenarios/test_invalid_jsonpath) when they select nothing."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory


def _fail(fields: dict[str, Any]) -> dict[str, Any]:
    return {"StartAt": "fail", "States": {"fail": {"Type": "Fail", **fields}}}


def test_error_path_and_cause_path_select_from_the_input() -> None:
    doc = _fail({"ErrorPath": "$.e", "CausePath": "States.Format('c={}', $.c)"})
    state = run_in_memory(compile_definition(doc), {"e": "Boom", "c": 1}).state
    assert (state.status, state.error, state.cause) == ("FAILED", "Boom", "c=1")


@pytest.mark.parametrize("field", ["ErrorPath", "CausePath"])
def test_a_path_that_selects_nothing_names_its_field(field: str) -> None:
    state = run_in_memory(compile_definition(_fail({field: "$.missing"})), {"a": 1}).state
    assert state.error == "States.Runtime"
    assert state.cause == (
        "An error occurred while executing the state 'fail' (entered at the event id #2). "
        f"The JSONPath '$.missing' specified for the field '{field}' could not be found "
        "in the input '{\"a\":1}'"
    )
