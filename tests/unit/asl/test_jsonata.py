"""JSONata expressions and templates, with AWS's added functions and wording."""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import QUERY_EVALUATION_ERROR, StatesError
from engine.core.asl.jsonata import (
    UNDEFINED,
    JsonataSyntaxError,
    compile_expression,
    compile_jsonata_template,
    is_jsonata,
    type_error_cause,
)


def ev(
    text: str,
    input_: Any = None,
    variables: dict[str, Any] | None = None,
    env: EvalEnv | None = None,
    field: str = "Output",
) -> Any:
    return compile_expression(text, field).evaluate(
        {"input": input_, "context": {}}, variables or {}, env
    )


@pytest.mark.parametrize(
    ("text", "input_", "expected"),
    [
        ("{% $states.input.value >= 20 and $states.input.value < 30 %}", {"value": 25}, True),
        ("{% $not($states.input.type = 'Private') %}", {"type": "Public"}, True),
        (
            "{% $merge([$states.input.part1, $states.input.part2]) %}",
            {"part1": {"a": 1}, "part2": {"b": 2}},
            {"a": 1, "b": 2},
        ),
        # evaluate_jsonata/test_base_jsonata_regular_expressions
        ('{% $contains("hello$world", /^hello\\$/) %}', None, True),
        ("{% $contains('hello$world', /^hello\\ /) %}", None, False),
        ("{% $number('2') %}", None, 2),
        ("{% null %}", None, None),
        ("{% [] %}", None, []),
        ("{% {'foo': 'bar'} %}", None, {"foo": "bar"}),
        # scenarios/test_escape_sequence_parsing[ESCAPE_SEQUENCES_JSONATA_COMPARISON_OUTPUT]
        ("{% $states.input = '\"' %}", '"', True),
    ],
)
def test_expressions(text: str, input_: Any, expected: Any) -> None:
    assert ev(text, input_) == expected


@pytest.mark.parametrize(
    ("arr", "size", "expected"),
    [([0], 1, [[0]]), ([0, 1, 2], 2, [[0, 1], [2]]), ([0, 1, 2, 3], 4, [[0, 1, 2, 3]])],
)
def test_partition(arr: list[int], size: int, expected: Any) -> None:
    # intrinsic_functions/test_array_jsonata::test_array_partition
    assert (
        ev("{% $partition($states.input.a, $states.input.n) %}", {"a": arr, "n": size}) == expected
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, 9, 3), [0, 3, 6, 9]),
        ((0, 10, 3), [0, 3, 6, 9]),
        ((1, 9, 9), 1),
        ((1, 9, 2), [1, 3, 5, 7, 9]),
    ],
)
def test_range_is_a_sequence(args: tuple[int, int, int], expected: Any) -> None:
    # Recorded: a single-element $range unwraps to a scalar.
    assert (
        ev("{% $range($states.input[0], $states.input[1], $states.input[2]) %}", list(args))
        == expected
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-0", 0),
        ("1.1", 1.1),
        ("true", True),
        ('"HelloWorld"', "HelloWorld"),
        ('{"Arg1": 1, "Arg2": []}', {"Arg1": 1, "Arg2": []}),
    ],
)
def test_parse(text: str, expected: Any) -> None:
    assert ev("{% $parse($states.input) %}", text) == expected


def test_hash_random_uuid() -> None:
    assert ev("{% $hash('input data', 'MD5') %}") == "812f45842bc6d66ee14572ce20db8e86"
    a = ev("{% $random() %}", env=EvalEnv(rng=random.Random(3)))
    assert a == ev("{% $random() %}", env=EvalEnv(rng=random.Random(3)))
    assert 0 <= a < 1
    assert ev("{% $uuid() %}", env=EvalEnv(uuid=lambda: "u-1")) == "u-1"


def test_now_reads_the_context_not_the_clock() -> None:
    expr = compile_expression("{% $now() %}", "Output")
    states = {"input": {}, "context": {"State": {"EnteredTime": "2024-05-01T10:00:00.000Z"}}}
    assert expr.evaluate(states, {}) == "2024-05-01T10:00:00.000Z"


def test_variables_and_states_bindings() -> None:
    states = {
        "input": {"input_values": [1, 2, 3]},
        "context": {"Map": {"Item": {"Value": 7}}},
        "result": {"ja_expr": "r"},
    }
    assert (
        compile_expression("{% $sum($states.input.input_values) + $var_constant_1 %}").evaluate(
            states, {"var_constant_1": 1}
        )
        == 7
    )
    assert compile_expression("{% $states.context.Map.Item.Value %}").evaluate(states, {}) == 7
    assert compile_expression("{% $states.result.ja_expr %}").evaluate(states, {}) == "r"
    assert compile_expression("{% $varname.varfield %}").evaluate(
        states, {"varname": {"varfield": [1]}}
    ) == [1]


def test_undefined_wording() -> None:
    # assign/test_undefined_reference
    with pytest.raises(StatesError) as info:
        ev("{% $doesNotExist %}", field="Assign/result")
    assert info.value.error == QUERY_EVALUATION_ERROR
    assert info.value.cause == (
        "The JSONata expression '$doesNotExist' specified for the field "
        "'Assign/result' returned nothing (undefined)."
    )
    expr = compile_expression("{% $doesNotExist %}")
    assert expr.evaluate({"input": {}}, {}, allow_undefined=True) is UNDEFINED


def test_function_result_is_unsupported() -> None:
    # scenarios/test_map_state_items_eval_jsonata_fail[function]
    with pytest.raises(StatesError) as info:
        ev("{% $fn := function($x){$x} %}", field="Items")
    assert info.value.cause == (
        "The JSONata expression '$fn := function($x){$x}' specified for "
        "the field 'Items' returned an unsupported result type."
    )


def test_evaluation_error_is_query_evaluation_error() -> None:
    with pytest.raises(StatesError) as info:
        ev("{% 1 + 'a' %}")
    assert info.value.error == QUERY_EVALUATION_ERROR
    assert "threw an error during evaluation" in info.value.cause


def test_type_error_cause_wording() -> None:
    # scenarios/test_map_state_items_eval_jsonata_fail
    assert type_error_cause("{'foo': 'bar'}", "Items", "array", {"foo": "bar"}) == (
        "The JSONata expression '{'foo': 'bar'}' specified for the field 'Items' returned an "
        "unexpected result type. Expected 'array', but was 'object' for value: {\"foo\":\"bar\"}"
    )
    assert type_error_cause("1", "Items", "array", 1).endswith("but was 'number' for value: 1")


def test_is_jsonata() -> None:
    assert is_jsonata("{% 1 %}")
    assert not is_jsonata(" {% states.input %} ")
    assert not is_jsonata("$states.input")
    assert not is_jsonata(1)


@pytest.mark.parametrize("bad", ["{% 1 + %}", "{% ( %}", "not jsonata"])
def test_syntax_errors_at_compile_time(bad: str) -> None:
    with pytest.raises(JsonataSyntaxError):
        compile_expression(bad)


def test_template_literals_stay_literal_and_expressions_nest() -> None:
    # outputdecl/test_base_cases[BASE_LITERALS], arguments/test_base_cases
    source = {
        "constant_not_jsonata": " {% states.input %} ",
        "constant_varpath": "$no.such.var.path",
        "constant_jp_input.$": "$",
        "constant_if": "States.Format('Format:{}', 101)",
        "lst": [None, 0, 0.1, True, [], {"constant": 0}, "{% $states.input.input_value %}"],
        "obj": {"sum": "{% $sum($states.input.input_values) %}"},
    }
    template = compile_jsonata_template(source, "Output")
    assert not template.is_constant
    out = template.render({"input": {"input_value": "s", "input_values": [1, 2, 3]}}, {})
    assert out == {
        **source,
        "lst": [None, 0, 0.1, True, [], {"constant": 0}, "s"],
        "obj": {"sum": 6},
    }


def test_template_field_names_nest_with_slashes() -> None:
    template = compile_jsonata_template({"result": "{% $doesNotExist %}"}, "Output")
    with pytest.raises(StatesError) as info:
        template.render({"input": {}}, {})
    assert info.value.cause == (
        "The JSONata expression '$doesNotExist' specified for the field "
        "'Output/result' returned nothing (undefined)."
    )


def test_constant_template() -> None:
    template = compile_jsonata_template([1, "two"], "Items")
    assert template.is_constant
    assert template.render({"input": {}}, {}) == [1, "two"]


def test_range_too_large_is_an_evaluation_error_not_a_memory_bomb() -> None:
    from engine.core.asl.jsonata import compile_expression

    expr = compile_expression("{% $range(1, 100000000000000000000, 1) %}", "Output")
    with pytest.raises(StatesError) as caught:
        expr.evaluate({"input": {}}, {})
    assert caught.value.error == "States.QueryEvaluationError"
