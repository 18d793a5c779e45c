"""Choice rules: every operator against AWS's recorded behaviour, plus the edges.

Each test reads given (a rule and a state input) / when (the rule is
evaluated) / then (the branch or error AWS gives)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.asl.choice import (
    CHOICE_RULE_OPERATORS,
    CompiledChoice,
    InvalidChoiceRule,
    check_rule,
    compile_choice,
    compile_rule,
    parse_timestamp,
)
from engine.core.asl.errors import StatesError
from tests.conformance.cases import CORPUS

CASES_DIR = CORPUS / "cases"


def _load(group: str) -> list[dict[str, Any]]:
    with (CASES_DIR / f"{group}.jsonl").open() as f:
        return [json.loads(line) for line in f]


OPERATOR_CASES = _load("choice_operators")


def _choose(choices: list[CompiledChoice], default: str | None, data: Any) -> str | None:
    for choice in choices:
        assert choice.rule is not None
        if choice.rule.matches(data, None, {}):
            return choice.next
    return default


def _rule(op: str, operand: Any, variable: str = "$.v") -> dict[str, Any]:
    return {"Variable": variable, op: operand}


def _matches(rule: dict[str, Any], data: Any, variables: dict[str, Any] | None = None) -> bool:
    return compile_rule(rule).matches(data, {"Execution": {"Name": "x"}}, variables or {})


# ------------------------------------------------------------- AWS corpus


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=[c["id"] for c in OPERATOR_CASES])
def test_choice_operators_take_the_branch_aws_took(case: dict[str, Any]) -> None:
    # given the recorded Choice state and its execution input
    state = case["definition"]["States"]["CheckValues"]
    choices = [
        compile_choice(rule, f"$.States.CheckValues.Choices[{i}]")
        for i, rule in enumerate(state["Choices"])
    ]
    # when the rules are evaluated on the input
    taken = _choose(choices, state.get("Default"), case["input"])
    # then the next state is the one AWS's output names
    assert taken == case["expected"]["output"]["TestResult.$"]


def test_every_jsonpath_choice_rule_in_the_corpus_compiles() -> None:
    # given every Choice state of every recorded definition
    compiled = 0
    for path in sorted(CASES_DIR.glob("*.jsonl")):
        for case in _load(path.stem):
            for state in _states(case["definition"]):
                if state.get("Type") != "Choice":
                    continue
                # when each rule is compiled, then it compiles
                for rule in state["Choices"]:
                    choice = compile_choice(rule)
                    assert (choice.rule is None) == ("Condition" in rule)
                    compiled += 1
    assert compiled > len(OPERATOR_CASES)


def _states(machine: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for state in machine["States"].values():
        found.append(state)
        for branch in state.get("Branches", []):
            found += _states(branch)
        for key in ("ItemProcessor", "Iterator"):
            if key in state:
                found += _states(state[key])
    return found


# ------------------------------------------------------------ type errors


@pytest.mark.parametrize(
    ("op", "operand"),
    [
        ("StringEquals", "1"),
        ("NumericEquals", 1),
        ("BooleanEquals", True),
        ("TimestampEquals", "2016-03-14T01:59:00Z"),
        ("StringMatches", "*"),
    ],
)
@pytest.mark.parametrize("value", [None, [], {}, "x", 1, True])
def test_comparison_with_a_value_of_the_wrong_type_is_false(
    op: str, operand: Any, value: Any
) -> None:
    # given a comparison and a value of another JSON type (or a non-matching one)
    rule = _rule(op, operand)
    expected = {
        "StringEquals": False,
        "NumericEquals": value == 1 and value is not True,
        "BooleanEquals": value is True,
        "TimestampEquals": False,
        "StringMatches": value == "x",
    }[op]
    # when / then it is simply false (AWS raises nothing)
    assert _matches(rule, {"v": value}) is expected


def test_path_operand_of_the_wrong_type_is_false() -> None:
    # given NumericEqualsPath whose other operand is a string
    rule = {"Variable": "$.v", "NumericEqualsPath": "$.w"}
    # when / then
    assert _matches(rule, {"v": 1, "w": "1"}) is False


def test_booleans_are_not_numbers() -> None:
    assert _matches(_rule("NumericEquals", 1), {"v": True}) is False
    assert _matches(_rule("IsNumeric", True), {"v": False}) is False


# ------------------------------------------------------------ missing paths


def test_missing_variable_raises_states_runtime_with_aws_wording() -> None:
    # given a rule on a field the input lacks
    rule = compile_rule(_rule("StringEquals", "a", "$.missing"))
    # when evaluated, then States.Runtime with AWS's cause
    with pytest.raises(StatesError) as raised:
        rule.matches({"v": 1}, None, {})
    assert raised.value == StatesError(
        "States.Runtime",
        "Invalid path '$.missing': The choice state's condition path references an invalid value.",
    )


def test_missing_path_operand_raises_states_runtime() -> None:
    rule = compile_rule({"Variable": "$.v", "StringEqualsPath": "$.other"})
    with pytest.raises(StatesError) as raised:
        rule.matches({"v": "a"}, None, {})
    assert raised.value.error == "States.Runtime"
    assert raised.value.cause.startswith("Invalid path '$.other'")


def test_missing_variable_under_a_type_test_raises() -> None:
    rule = compile_rule(_rule("IsNull", True, "$.missing"))
    with pytest.raises(StatesError):
        rule.matches({}, None, {})


@pytest.mark.parametrize(
    ("expected", "data", "result"),
    [
        (True, {}, False),
        (False, {}, True),
        (True, {"v": None}, True),
        (False, {"v": None}, False),
    ],
)
def test_is_present_tests_presence_without_raising(expected: bool, data: Any, result: bool) -> None:
    assert _matches(_rule("IsPresent", expected), data) is result


def test_is_present_on_an_undefined_variable_is_false() -> None:
    assert _matches(_rule("IsPresent", True, "$nothing"), {}, {}) is False


# ------------------------------------------------------------ roots


def test_variable_may_read_the_context_object() -> None:
    rule = _rule("StringEquals", "x", "$$.Execution.Name")
    assert _matches(rule, {}) is True


def test_variable_may_read_a_workflow_variable() -> None:
    rule = _rule("NumericGreaterThan", 2, "$guess.value")
    assert _matches(rule, {}, {"guess": {"value": 3}}) is True


def test_path_operand_may_read_a_workflow_variable() -> None:
    rule = {"Variable": "$.v", "StringEqualsPath": "$answer"}
    assert _matches(rule, {"v": "yes"}, {"answer": "yes"}) is True


# ------------------------------------------------------------ strings


@pytest.mark.parametrize(
    ("pattern", "value", "result"),
    [
        ("log-*.txt", "log-2024.txt", True),
        ("log-*.txt", "log-.txt", True),
        ("log-*.txt", "log-2024.csv", False),
        ("*", "", True),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "acb", False),
        ("a\\*b", "a*b", True),
        ("a\\*b", "aXb", False),
        ("a\\\\b", "a\\b", True),
        ("a\\\\*", "a\\anything", True),
        ("x.y", "xzy", False),
        ("line*", "line1\nline2", True),
    ],
)
def test_string_matches_wildcards_and_escapes(pattern: str, value: str, result: bool) -> None:
    assert _matches(_rule("StringMatches", pattern), {"v": value}) is result


def test_string_order_is_by_utf16_code_units_as_in_java() -> None:
    # given U+FF5E (one BMP unit 0xFF5E) and U+1F600 (surrogates 0xD83D 0xDE00):
    # code points say U+FF5E < U+1F600, UTF-16 units say the opposite
    rule = _rule("StringGreaterThan", "\U0001f600")
    assert _matches(rule, {"v": "\uff5e"}) is True


@given(st.text(), st.text())
def test_string_ordering_agrees_with_equality(a: str, b: str) -> None:
    lt = _matches(_rule("StringLessThan", b), {"v": a})
    gt = _matches(_rule("StringGreaterThan", b), {"v": a})
    eq = _matches(_rule("StringEquals", b), {"v": a})
    assert [lt, eq, gt].count(True) == 1
    assert _matches(_rule("StringLessThanEquals", b), {"v": a}) is (lt or eq)


@given(st.text())
def test_escaped_text_as_a_pattern_matches_only_itself(text: str) -> None:
    pattern = text.replace("\\", "\\\\").replace("*", "\\*")
    assert _matches(_rule("StringMatches", pattern), {"v": text}) is True
    assert _matches(_rule("StringMatches", pattern), {"v": text + "x"}) is False


# ------------------------------------------------------------ numbers


@given(
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
)
def test_numeric_operators_compare_by_value(a: float, b: float) -> None:
    data = {"v": a}
    assert _matches(_rule("NumericEquals", b), data) is (a == b)
    assert _matches(_rule("NumericLessThan", b), data) is (a < b)
    assert _matches(_rule("NumericGreaterThanEquals", b), data) is (a >= b)
    assert _matches({"Variable": "$.v", "NumericLessThanEqualsPath": "$.w"}, {"v": a, "w": b}) is (
        a <= b
    )


# ------------------------------------------------------------ timestamps


def test_timestamps_compare_as_instants_across_offsets() -> None:
    rule = _rule("TimestampEquals", "2016-03-14T01:59:00Z")
    assert _matches(rule, {"v": "2016-03-14T02:59:00+01:00"}) is True


def test_timestamps_keep_nanosecond_precision() -> None:
    rule = _rule("TimestampLessThan", "2016-03-05T21:29:29.243167253Z")
    assert _matches(rule, {"v": "2016-03-05T21:29:29.243167252Z"}) is True


@pytest.mark.parametrize(
    "text",
    [
        "2016-03-14T01:59:00",  # no offset
        "2016-03-14 01:59:00Z",  # no T
        "2016-03-14t01:59:00Z",  # lower-case t
        "2016-13-14T01:59:00Z",  # month 13
        "2016-02-30T01:59:00Z",  # no such day
        "2016-03-14T25:59:00Z",  # hour 25
        "2016-03-14T01:59Z",  # no seconds
        "2016-03-14T01:59:00.1234567890Z",  # ten fraction digits
        "2016-03-14",
        "",
    ],
)
def test_strings_aws_does_not_parse_are_not_timestamps(text: str) -> None:
    assert parse_timestamp(text) is None
    assert _matches(_rule("IsTimestamp", True), {"v": text}) is False
    assert _matches(_rule("TimestampLessThan", "2999-01-01T00:00:00Z"), {"v": text}) is False


@pytest.mark.parametrize(
    "text",
    ["2016-03-14T01:59:00Z", "2016-03-14T01:59:00.5-07:00", "2016-03-14T01:59:00.123456789+05:30"],
)
def test_rfc3339_strings_are_timestamps(text: str) -> None:
    assert _matches(_rule("IsTimestamp", True), {"v": text}) is True


# ------------------------------------------------------------ And / Or / Not


def test_and_or_not_nest() -> None:
    # given (v > 10 and not v == 15) or s == "go"
    rule = {
        "Or": [
            {"And": [_rule("NumericGreaterThan", 10), {"Not": _rule("NumericEquals", 15)}]},
            _rule("StringEquals", "go", "$.s"),
        ]
    }
    assert _matches(rule, {"v": 12, "s": "stop"}) is True
    assert _matches(rule, {"v": 15, "s": "stop"}) is False
    assert _matches(rule, {"v": 15, "s": "go"}) is True


def test_and_stops_at_the_first_false_rule() -> None:
    # given And whose second rule reads a missing field: AWS short-circuits too
    rule = {"And": [_rule("IsPresent", True, "$.x"), _rule("NumericEquals", 3, "$.x")]}
    assert _matches(rule, {}) is False


# ------------------------------------------------------------ compile_choice


def test_jsonpath_choice_carries_next_assign_and_output_raw() -> None:
    choice = compile_choice({**_rule("IsNull", True), "Next": "N", "Assign": {"a.$": "$.v"}})
    assert (choice.next, choice.assign, choice.condition) == ("N", {"a.$": "$.v"}, None)
    assert choice.rule is not None and choice.rule.matches({"v": None}) is True


def test_jsonata_choice_leaves_the_condition_to_the_jsonata_module() -> None:
    choice = compile_choice({"Condition": "{% $x > 1 %}", "Next": "N", "Output": {"k": 1}})
    assert choice.rule is None
    assert (choice.condition, choice.output, choice.has_output) == ("{% $x > 1 %}", {"k": 1}, True)


def test_jsonata_choice_may_be_a_constant() -> None:
    assert compile_choice({"Condition": True, "Next": "N"}).condition is True


# ------------------------------------------------------------ compile errors


def _errors(rule: Any) -> list[tuple[str, str]]:
    return check_rule(rule, "$.R")


def test_every_comparison_operator_is_known() -> None:
    expected = {
        f"{kind}{op}{suffix}"
        for kind in ("String", "Numeric", "Timestamp")
        for op in ("Equals", "LessThan", "GreaterThan", "LessThanEquals", "GreaterThanEquals")
        for suffix in ("", "Path")
    } | {
        "BooleanEquals",
        "BooleanEqualsPath",
        "StringMatches",
        "IsNull",
        "IsPresent",
        "IsNumeric",
        "IsString",
        "IsBoolean",
        "IsTimestamp",
    }
    assert expected == CHOICE_RULE_OPERATORS


def test_unknown_operator_is_reported_at_its_key() -> None:
    assert ("$.R.NumericEqual", "unknown field 'NumericEqual' in a choice rule") in _errors(
        {"Variable": "$.v", "NumericEqual": 1}
    )


def test_two_operators_are_rejected() -> None:
    [(path, message)] = _errors({"Variable": "$.v", "IsNull": True, "IsString": True})
    assert path == "$.R" and "exactly one comparison operator" in message


def test_literal_of_the_wrong_type_is_rejected() -> None:
    assert _errors(_rule("NumericEquals", "1")) == [
        ("$.R.NumericEquals", "NumericEquals must be a number")
    ]
    assert _errors(_rule("BooleanEquals", 1)) == [
        ("$.R.BooleanEquals", "BooleanEquals must be a boolean")
    ]
    assert _errors(_rule("IsPresent", "yes")) == [("$.R.IsPresent", "IsPresent must be a boolean")]


def test_invalid_timestamp_literal_is_rejected() -> None:
    [(path, _)] = _errors(_rule("TimestampEquals", "2016-03-14"))
    assert path == "$.R.TimestampEquals"


def test_variable_must_be_a_reference_path() -> None:
    [(path, _)] = _errors(_rule("IsNull", True, "$.items[*]"))
    assert path == "$.R.Variable"


def test_operand_path_must_compile() -> None:
    [(path, _)] = _errors({"Variable": "$.v", "StringEqualsPath": "no-dollar"})
    assert path == "$.R.StringEqualsPath"


def test_empty_and_is_rejected() -> None:
    assert _errors({"And": []}) == [("$.R.And", "And must be a non-empty array of choice rules")]


def test_nested_errors_are_all_reported_with_their_paths() -> None:
    errors = _errors(
        {"Or": [{"Not": _rule("NumericEquals", "x")}, {"Variable": 1, "IsNull": True}]}
    )
    assert [p for p, _ in errors] == ["$.R.Or[0].Not.NumericEquals", "$.R.Or[1].Variable"]


def test_variable_with_a_combinator_is_rejected() -> None:
    [(path, _)] = _errors({"Variable": "$.v", "Not": _rule("IsNull", True)})
    assert path == "$.R"


def test_compile_rule_raises_with_every_error() -> None:
    with pytest.raises(InvalidChoiceRule) as raised:
        compile_rule({"And": [_rule("NumericEquals", "x"), _rule("BooleanEquals", 2)]}, "$.R")
    assert len(raised.value.errors) == 2


def test_top_level_choice_needs_next() -> None:
    with pytest.raises(InvalidChoiceRule) as raised:
        compile_choice(_rule("IsNull", True), "$.C[0]")
    assert raised.value.errors[0][0] == "$.C[0].Next"


def test_condition_excludes_variable() -> None:
    with pytest.raises(InvalidChoiceRule) as raised:
        compile_choice({"Condition": "{% true %}", "Variable": "$.v", "Next": "N"}, "$.C[0]")
    assert raised.value.errors == [
        ("$.C[0].Variable", "field 'Variable' is not allowed with Condition")
    ]


def test_condition_must_be_enclosed_in_jsonata_markers() -> None:
    with pytest.raises(InvalidChoiceRule) as raised:
        compile_choice({"Condition": "$x > 1", "Next": "N"}, "$.C[0]")
    assert raised.value.errors[0][0] == "$.C[0].Condition"
