"""Definition validation: AWS-accepted definitions pass, each rejection rule
reports the exact location. Tests read given (a definition) / when
(validated) / then (these errors)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from engine.core.asl.validate import ValidationError, validate_definition
from tests.conformance.cases import CORPUS

CASES_DIR = CORPUS / "cases"


def _corpus() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.jsonl")):
        with path.open() as f:
            cases += [json.loads(line) for line in f]
    return cases


CORPUS = _corpus()


def _pass(**fields: Any) -> dict[str, Any]:
    return {"Type": "Pass", "End": True, **fields}


def _machine(*states: tuple[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"StartAt": states[0][0], "States": dict(states), **top}


def _one(state: dict[str, Any], **top: Any) -> dict[str, Any]:
    return _machine(("S", state), **top)


def _paths(doc: Any) -> list[str]:
    return [e.path for e in validate_definition(doc)]


# ------------------------------------------------------------- AWS corpus


def test_corpus_has_every_recorded_execution() -> None:
    assert len(CORPUS) == 919


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_every_definition_aws_accepted_validates(case: dict[str, Any]) -> None:
    assert validate_definition(case["definition"]) == []


# ------------------------------------------------------------- top level


def test_valid_minimal_machine_has_no_errors() -> None:
    assert validate_definition(_one(_pass())) == []


@pytest.mark.parametrize("doc", [None, [], "x", 1])
def test_a_non_object_document_is_one_error_at_the_root(doc: Any) -> None:
    assert _paths(doc) == ["$"]


def test_missing_start_at_and_states_are_both_reported() -> None:
    assert _paths({}) == ["$.StartAt", "$.States"]


def test_empty_states_is_rejected() -> None:
    assert _paths({"StartAt": "A", "States": {}}) == ["$.States"]


def test_start_at_must_name_a_state() -> None:
    doc = {"StartAt": "Nope", "States": {"S": _pass()}}
    errors = validate_definition(doc)
    assert ValidationError("$.StartAt", "StartAt names no state: 'Nope'") in errors


def test_unknown_top_level_field_is_rejected() -> None:
    assert _paths(_one(_pass(), Extra=1)) == ["$.Extra"]


def test_top_level_timeout_must_be_positive() -> None:
    assert _paths(_one(_pass(), TimeoutSeconds=0)) == ["$.TimeoutSeconds"]


def test_version_must_be_1_0() -> None:
    assert _paths(_one(_pass(), Version="2.0")) == ["$.Version"]


def test_all_errors_are_collected() -> None:
    # given three independent problems
    doc = _machine(("A", {"Type": "Pass", "Next": "Missing"}), ("B", {"Type": "Bogus"}))
    # then each is reported
    assert _paths(doc) == ["$.States.A.Next", "$.States.B.Type", "$.States.B"]


# ------------------------------------------------------------- states


def test_unknown_type_is_rejected() -> None:
    assert _paths(_one({"Type": "Sleep", "End": True})) == ["$.States.S.Type"]


def test_state_name_longer_than_80_characters_is_rejected() -> None:
    name = "N" * 81
    assert _paths({"StartAt": name, "States": {name: _pass()}}) == [f"$.States.{name}"]


def test_state_name_of_80_characters_is_fine() -> None:
    name = "N" * 80
    assert validate_definition({"StartAt": name, "States": {name: _pass()}}) == []


def test_state_names_with_spaces_are_quoted_in_paths() -> None:
    doc = {"StartAt": "My state", "States": {"My state": {"Type": "Pass", "Next": "X"}}}
    assert _paths(doc) == ["$.States['My state'].Next"]


def test_unknown_field_of_a_state_type_is_rejected() -> None:
    doc = _one({"Type": "Succeed", "Resource": "x"})
    assert validate_definition(doc) == [
        ValidationError("$.States.S.Resource", "field 'Resource' is not allowed in a Succeed state")
    ]


def test_duplicate_state_names_across_branches_are_rejected() -> None:
    branch = {"StartAt": "S", "States": {"S": _pass()}}
    doc = _one({"Type": "Parallel", "End": True, "Branches": [branch, copy.deepcopy(branch)]})
    assert _paths(doc) == [
        "$.States.S.Branches[0].States.S",
        "$.States.S.Branches[1].States.S",
    ]


# ------------------------------------------------------------- transitions


def test_next_must_name_an_existing_state() -> None:
    doc = _one({"Type": "Pass", "Next": "Approve"})
    assert validate_definition(doc) == [
        ValidationError("$.States.S.Next", "names no state in this scope: 'Approve'")
    ]


def test_state_needs_next_or_end() -> None:
    assert _paths(_one({"Type": "Pass"})) == ["$.States.S"]


def test_state_must_not_have_both_next_and_end() -> None:
    doc = _machine(("A", {"Type": "Pass", "Next": "B", "End": True}), ("B", _pass()))
    assert _paths(doc) == ["$.States.A"]


def test_end_false_without_next_is_rejected() -> None:
    assert _paths(_one({"Type": "Pass", "End": False})) == ["$.States.S"]


@pytest.mark.parametrize("kind", ["Succeed", "Fail"])
def test_terminal_states_have_no_next_or_end(kind: str) -> None:
    assert _paths(_one({"Type": kind, "End": True})) == ["$.States.S.End"]


def test_choice_has_no_end() -> None:
    doc = _machine(
        (
            "C",
            {
                "Type": "Choice",
                "End": True,
                "Choices": [{"Variable": "$.v", "IsNull": True, "Next": "D"}],
            },
        ),
        ("D", _pass()),
    )
    assert _paths(doc) == ["$.States.C.End"]


def test_unreachable_state_is_rejected() -> None:
    doc = _machine(("A", _pass()), ("Orphan", _pass()))
    assert validate_definition(doc) == [
        ValidationError("$.States.Orphan", "state 'Orphan' is not reachable from StartAt")
    ]


def test_states_reached_through_choice_default_and_catch_are_reachable() -> None:
    doc = _machine(
        (
            "C",
            {
                "Type": "Choice",
                "Choices": [{"Variable": "$.v", "IsNull": True, "Next": "T"}],
                "Default": "D",
            },
        ),
        (
            "T",
            {
                "Type": "Task",
                "Resource": "test:echo",
                "End": True,
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "F"}],
            },
        ),
        ("D", {"Type": "Succeed"}),
        ("F", {"Type": "Fail"}),
    )
    assert validate_definition(doc) == []


def test_next_must_stay_inside_its_branch() -> None:
    branch = {"StartAt": "In", "States": {"In": {"Type": "Pass", "Next": "Out"}}}
    doc = _machine(
        ("P", {"Type": "Parallel", "Next": "Out", "Branches": [branch]}), ("Out", _pass())
    )
    assert _paths(doc) == ["$.States.P.Branches[0].States.In.Next"]


# ------------------------------------------------------------- Choice


def test_choice_needs_non_empty_choices() -> None:
    assert _paths(_one({"Type": "Choice", "Choices": []})) == ["$.States.S.Choices"]


def test_choice_rule_next_must_name_a_state() -> None:
    doc = _one({"Type": "Choice", "Choices": [{"Variable": "$.v", "IsNull": True, "Next": "Nope"}]})
    assert _paths(doc) == ["$.States.S.Choices[0].Next"]


def test_choice_default_must_name_a_state() -> None:
    doc = _machine(
        (
            "C",
            {
                "Type": "Choice",
                "Choices": [{"Variable": "$.v", "IsNull": True, "Next": "D"}],
                "Default": "Nope",
            },
        ),
        ("D", _pass()),
    )
    assert _paths(doc) == ["$.States.C.Default"]


def test_choice_rule_errors_are_reported_inside_the_rule() -> None:
    doc = _machine(
        (
            "C",
            {"Type": "Choice", "Choices": [{"Variable": "$.v", "NumericEquals": "1", "Next": "D"}]},
        ),
        ("D", _pass()),
    )
    assert _paths(doc) == ["$.States.C.Choices[0].NumericEquals"]


def test_jsonata_choice_rule_needs_condition() -> None:
    doc = _machine(
        (
            "C",
            {
                "Type": "Choice",
                "QueryLanguage": "JSONata",
                "Choices": [{"Variable": "$.v", "IsNull": True, "Next": "D"}],
            },
        ),
        ("D", _pass()),
    )
    assert "$.States.C.Choices[0].Condition" in _paths(doc)


def test_jsonpath_choice_rule_rejects_condition() -> None:
    doc = _machine(
        ("C", {"Type": "Choice", "Choices": [{"Condition": "{% true %}", "Next": "D"}]}),
        ("D", _pass()),
    )
    assert _paths(doc) == ["$.States.C.Choices[0].Condition"]


# ------------------------------------------------------------- required fields and types


def test_task_needs_a_resource() -> None:
    assert _paths(_one({"Type": "Task", "End": True})) == ["$.States.S.Resource"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("TimeoutSeconds", 0),
        ("TimeoutSeconds", 1.5),
        ("HeartbeatSeconds", -1),
        ("TimeoutSeconds", True),
    ],
)
def test_task_timeouts_must_be_positive_integers(field: str, value: Any) -> None:
    doc = _one({"Type": "Task", "Resource": "test:echo", "End": True, field: value})
    assert _paths(doc) == [f"$.States.S.{field}"]


def test_heartbeat_must_be_shorter_than_timeout() -> None:
    doc = _one(
        {"Type": "Task", "Resource": "r", "End": True, "TimeoutSeconds": 5, "HeartbeatSeconds": 5}
    )
    assert _paths(doc) == ["$.States.S.HeartbeatSeconds"]


def test_wait_needs_exactly_one_duration() -> None:
    assert _paths(_one({"Type": "Wait", "End": True})) == ["$.States.S"]
    assert _paths(_one({"Type": "Wait", "End": True, "Seconds": 1, "SecondsPath": "$.s"})) == [
        "$.States.S"
    ]


@pytest.mark.parametrize("seconds", [-1, 1.5, "5", None])
def test_wait_seconds_must_be_a_non_negative_integer(seconds: Any) -> None:
    assert _paths(_one({"Type": "Wait", "End": True, "Seconds": seconds})) == ["$.States.S.Seconds"]


def test_wait_timestamp_must_be_rfc3339() -> None:
    doc = _one({"Type": "Wait", "End": True, "Timestamp": "2016-03-14 01:59:00"})
    assert _paths(doc) == ["$.States.S.Timestamp"]


def test_fail_error_and_error_path_are_exclusive() -> None:
    assert _paths(_one({"Type": "Fail", "Error": "E", "ErrorPath": "$.e"})) == ["$.States.S"]


def test_parallel_needs_branches() -> None:
    assert _paths(_one({"Type": "Parallel", "End": True, "Branches": []})) == [
        "$.States.S.Branches"
    ]


def test_parallel_branch_is_validated_as_a_machine() -> None:
    doc = _one({"Type": "Parallel", "End": True, "Branches": [{"StartAt": "X", "States": {}}]})
    assert _paths(doc) == ["$.States.S.Branches[0].States"]


def test_map_needs_an_item_processor() -> None:
    assert _paths(_one({"Type": "Map", "End": True})) == ["$.States.S"]


def test_map_item_processor_is_validated_as_a_machine() -> None:
    processor = {
        "StartAt": "I",
        "States": {"I": {"Type": "Pass"}},
        "ProcessorConfig": {"Mode": "SIDEWAYS"},
    }
    doc = _one({"Type": "Map", "End": True, "ItemProcessor": processor})
    assert _paths(doc) == [
        "$.States.S.ItemProcessor.States.I",
        "$.States.S.ItemProcessor.ProcessorConfig.Mode",
    ]


def test_map_tolerated_failure_percentage_is_bounded() -> None:
    processor = {"StartAt": "I", "States": {"I": _pass()}}
    doc = _one(
        {"Type": "Map", "End": True, "ItemProcessor": processor, "ToleratedFailurePercentage": 101}
    )
    assert _paths(doc) == ["$.States.S.ToleratedFailurePercentage"]


# ------------------------------------------------------------- Retry / Catch


def _task(**fields: Any) -> dict[str, Any]:
    return {"Type": "Task", "Resource": "test:echo", "End": True, **fields}


def test_retry_error_equals_must_be_non_empty() -> None:
    assert _paths(_one(_task(Retry=[{"ErrorEquals": []}]))) == ["$.States.S.Retry[0].ErrorEquals"]


def test_states_all_must_be_alone() -> None:
    doc = _one(_task(Retry=[{"ErrorEquals": ["States.ALL", "Custom"]}]))
    assert validate_definition(doc) == [
        ValidationError(
            "$.States.S.Retry[0].ErrorEquals", "States.ALL must appear alone in ErrorEquals"
        )
    ]


def test_states_all_must_be_in_the_last_retrier() -> None:
    doc = _one(_task(Retry=[{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["Custom"]}]))
    assert _paths(doc) == ["$.States.S.Retry[0].ErrorEquals"]


def test_states_all_must_be_in_the_last_catcher() -> None:
    doc = _machine(
        (
            "S",
            _task(
                Catch=[
                    {"ErrorEquals": ["States.ALL"], "Next": "F"},
                    {"ErrorEquals": ["X"], "Next": "F"},
                ]
            ),
        ),
        ("F", {"Type": "Fail"}),
    )
    assert _paths(doc) == ["$.States.S.Catch[0].ErrorEquals"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("MaxAttempts", -1),
        ("IntervalSeconds", 0),
        ("BackoffRate", 0.5),
        ("JitterStrategy", "SOME"),
        ("MaxDelaySeconds", 0),
        ("Delay", 1),
    ],
)
def test_retrier_fields_are_checked(field: str, value: Any) -> None:
    doc = _one(_task(Retry=[{"ErrorEquals": ["X"], field: value}]))
    assert _paths(doc) == [f"$.States.S.Retry[0].{field}"]


def test_catcher_next_must_name_a_state() -> None:
    doc = _one(_task(Catch=[{"ErrorEquals": ["X"], "Next": "Nope"}]))
    assert _paths(doc) == ["$.States.S.Catch[0].Next"]


def test_catcher_needs_next() -> None:
    assert _paths(_one(_task(Catch=[{"ErrorEquals": ["X"]}]))) == ["$.States.S.Catch[0].Next"]


# ------------------------------------------------------------- paths and templates


def test_input_path_must_compile() -> None:
    assert _paths(_one(_pass(InputPath="no-dollar"))) == ["$.States.S.InputPath"]


def test_result_path_must_be_a_reference_path() -> None:
    assert _paths(_one(_pass(ResultPath="$.items[*]"))) == ["$.States.S.ResultPath"]


def test_result_path_may_not_write_to_the_context() -> None:
    assert _paths(_one(_pass(ResultPath="$$.Execution"))) == ["$.States.S.ResultPath"]


def test_null_paths_are_allowed() -> None:
    assert validate_definition(_one(_pass(InputPath=None, OutputPath=None, ResultPath=None))) == []


def test_items_path_must_be_a_reference_path() -> None:
    processor = {"StartAt": "I", "States": {"I": _pass()}}
    doc = _one({"Type": "Map", "End": True, "ItemProcessor": processor, "ItemsPath": "$..x"})
    assert _paths(doc) == ["$.States.S.ItemsPath"]


def test_dollar_keys_in_parameters_must_compile_at_any_depth() -> None:
    doc = _one(_pass(Parameters={"ok.$": "$.a", "nested": {"list": [{"bad.$": "oops"}]}}))
    assert _paths(doc) == ["$.States.S.Parameters.nested.list[0]['bad.$']"]


def test_dollar_keys_may_hold_intrinsic_calls() -> None:
    doc = _one(_pass(Parameters={"v.$": "States.Format('{}', $.a)"}))
    assert validate_definition(doc) == []


def test_dollar_key_value_must_be_a_string() -> None:
    assert _paths(_one(_pass(Parameters={"v.$": 3}))) == ["$.States.S.Parameters['v.$']"]


def test_result_selector_is_checked_like_parameters() -> None:
    assert _paths(_one(_task(ResultSelector={"x.$": "bad"}))) == [
        "$.States.S.ResultSelector['x.$']"
    ]


# ------------------------------------------------------------- QueryLanguage


def test_jsonata_state_rejects_jsonpath_fields() -> None:
    doc = _one(_pass(QueryLanguage="JSONata", InputPath="$.a", ResultPath="$.r", Output={"k": 1}))
    assert _paths(doc) == ["$.States.S.InputPath", "$.States.S.ResultPath"]


def test_jsonata_top_level_applies_to_every_state() -> None:
    doc = _one(_pass(Parameters={"a": 1}), QueryLanguage="JSONata")
    assert _paths(doc) == ["$.States.S.Parameters"]


def test_jsonpath_state_rejects_jsonata_fields() -> None:
    assert _paths(_one(_task(Arguments={"a": 1}))) == ["$.States.S.Arguments"]


def test_jsonata_states_in_a_jsonpath_machine_are_fine() -> None:
    doc = _one(
        _pass(QueryLanguage="JSONata", Output="{% $states.input %}"), QueryLanguage="JSONPath"
    )
    assert validate_definition(doc) == []


def test_jsonpath_state_in_a_jsonata_machine_is_rejected() -> None:
    doc = _one(_pass(QueryLanguage="JSONPath"), QueryLanguage="JSONata")
    assert _paths(doc) == ["$.States.S.QueryLanguage"]


def test_jsonata_language_is_inherited_by_branches() -> None:
    branch = {"StartAt": "B", "States": {"B": _pass(InputPath="$")}}
    doc = _one({"Type": "Parallel", "End": True, "Branches": [branch]}, QueryLanguage="JSONata")
    assert _paths(doc) == ["$.States.S.Branches[0].States.B.InputPath"]


def test_jsonata_expressions_stand_in_for_numbers() -> None:
    doc = _one(
        {"Type": "Wait", "End": True, "Seconds": "{% $states.input.s %}"}, QueryLanguage="JSONata"
    )
    assert validate_definition(doc) == []


def test_unknown_query_language_is_rejected() -> None:
    assert _paths(_one(_pass(), QueryLanguage="XPath")) == ["$.QueryLanguage"]


def test_malformed_intrinsic_call_is_rejected() -> None:
    doc = _one(_pass(Parameters={"v.$": "States.Format('{}', $.a"}))
    assert _paths(doc) == ["$.States.S.Parameters['v.$']"]


def test_unknown_intrinsic_function_is_rejected() -> None:
    assert _paths(_one(_pass(Parameters={"v.$": "States.Nope($.a)"}))) == [
        "$.States.S.Parameters['v.$']"
    ]


def test_fail_cause_path_may_be_an_intrinsic_call() -> None:
    doc = _one({"Type": "Fail", "CausePath": "States.Format('{}', $.c)"})
    assert validate_definition(doc) == []
