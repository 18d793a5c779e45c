"""Payload templates (Parameters / ResultSelector / ItemSelector / Assign)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import INTRINSIC_FAILURE, RUNTIME, StatesError
from engine.core.asl.payload import TemplateSyntaxError, compile_field, compile_template

ENV = EvalEnv()


def test_constant_template_is_built_once_and_shared() -> None:
    source = {"a": [1, {"b": None}], "c": "$.not_a_path"}
    template = compile_template(source)
    assert template.is_constant
    first = template.render({}, None, ENV)
    assert first == source
    assert template.render({"x": 1}, None, ENV) is first


def test_dollar_keys_take_paths_intrinsics_context_and_variables() -> None:
    template = compile_template(
        {
            "fromInput.$": "$.a",
            "nested": {"ctx.$": "$$.Map.Item.Index", "list": [1, {"var.$": "$v.k"}]},
            "fn.$": "States.Format('{}-{}', $.a, $v.k)",
            "plain": "States.Format('kept')",
        }
    )
    out = template.render(
        {"a": 1}, {"Map": {"Item": {"Index": 3}}}, EvalEnv(variables={"v": {"k": "x"}})
    )
    assert out == {
        "fromInput": 1,
        "nested": {"ctx": 3, "list": [1, {"var": "x"}]},
        "fn": "1-x",
        "plain": "States.Format('kept')",
    }


def test_indefinite_path_in_template_gives_list() -> None:
    # base/test_state_pass_regex_json_path_base
    data = {"users": [{"year": 1997, "status": 0}, {"year": 1998, "status": 1}]}
    out = compile_template({"FromInput.$": "$.users[?(@.status == 0)]"}).render(data, None, ENV)
    assert out == {"FromInput": [{"year": 1997, "status": 0}]}
    assert compile_template({"item.$": "$.items[*]"}).render({}, None, ENV) == {"item": []}


@pytest.mark.parametrize(
    ("params", "cause"),
    [
        # scenarios/test_invalid_jsonpath[INVALID_JSONPATH_IN_STRING_EXPR_JSONPATH]
        (
            {"value.$": "$.no_such_jsonpath"},
            "The JSONPath '$.no_such_jsonpath' specified for the field 'value.$' could not be "
            "found in the input '{\"int-literal\":0}'",
        ),
        # ... [INVALID_JSONPATH_IN_STRING_EXPR_CONTEXTPATH]: the input is still the state input
        (
            {"value.$": "$$.Execution.Input.no_such_jsonpath"},
            "The JSONPath '$$.Execution.Input.no_such_jsonpath' specified for the field 'value.$' "
            "could not be found in the input '{\"int-literal\":0}'",
        ),
        (
            {"value.$": "States.Format('{}', $.missing)"},
            "The JSONPath '$.missing' specified for the field 'value.$' could not be found in the "
            "input '{\"int-literal\":0}'",
        ),
    ],
)
def test_missing_path_wording(params: dict[str, Any], cause: str) -> None:
    data = {"int-literal": 0}
    with pytest.raises(StatesError) as info:
        compile_template(params).render(data, {"Execution": {"Input": data}}, ENV)
    assert info.value.error == RUNTIME
    assert info.value.cause == cause


def test_fail_state_fields_name_themselves() -> None:
    # scenarios/test_invalid_jsonpath[INVALID_JSONPATH_IN_ERRORPATH]
    field = compile_field("ErrorPath", "$.ErrorX")
    with pytest.raises(StatesError) as info:
        field.render({"Error": "error-value"}, None, ENV)
    assert info.value.cause == (
        "The JSONPath '$.ErrorX' specified for the field 'ErrorPath' "
        'could not be found in the input \'{"Error":"error-value"}\''
    )
    cause = compile_field(
        "CausePath",
        "States.Format('This is a custom error message for {}, caused by {}.', $.Error, $.Cause)",
    )
    assert cause.render({"Error": "error string", "Cause": "cause string"}, None, ENV) == (
        "This is a custom error message for error string, caused by cause string."
    )


def test_intrinsic_failure_propagates() -> None:
    with pytest.raises(StatesError) as info:
        compile_template({"x.$": "States.ArrayLength($.a)"}).render({"a": 1}, None, ENV)
    assert info.value.error == INTRINSIC_FAILURE


@pytest.mark.parametrize(
    "bad",
    [
        {"x.$": "no dollar"},
        {"x.$": 5},
        {"x.$": "$.a["},
        {"x.$": "States.Nope()"},
        {"deep": [{"x.$": "States.Format("}]},
    ],
)
def test_bad_dynamic_values_fail_at_compile_time(bad: dict[str, Any]) -> None:
    with pytest.raises(TemplateSyntaxError):
        compile_template(bad)


def test_render_does_not_copy_selected_values() -> None:
    data = {"big": {"k": list(range(100))}}
    out = compile_template({"b.$": "$.big"}).render(data, None, ENV)
    assert out["b"] is data["big"]
