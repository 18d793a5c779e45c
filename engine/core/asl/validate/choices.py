"""Choice states: each rule (checked by ``engine.core.asl.choice``), its target
and the fields its query language allows, and the Default target."""

from __future__ import annotations

from typing import Any

from engine.core.asl.choice import check_choice
from engine.core.asl.validate.fields import JSONATA, JSONPATH
from engine.core.asl.validate.report import Report, json_path_key


def check_choices(
    report: Report, state: dict[str, Any], path: str, scope: dict[str, Any], language: str
) -> None:
    """Every Choices entry and the Default target."""
    choices = state.get("Choices")
    where = json_path_key(path, "Choices")
    if not isinstance(choices, list) or not choices:
        report.fail(where, "Choices is required and must be a non-empty array")
        choices = []
    for i, rule in enumerate(choices):
        rule_path = f"{where}[{i}]"
        for err_path, message in check_choice(rule, rule_path):
            report.fail(err_path, message)
        if not isinstance(rule, dict):
            continue
        if isinstance(rule.get("Next"), str):  # a missing Next is check_choice's report
            report.target(rule["Next"], json_path_key(rule_path, "Next"), scope)
        if language == JSONATA and "Condition" not in rule:
            report.fail(
                json_path_key(rule_path, "Condition"),
                "a JSONata choice rule requires Condition",
            )
        if language == JSONPATH:
            for field in ("Condition", "Output"):
                if field in rule:
                    report.fail(
                        json_path_key(rule_path, field),
                        f"field {field!r} requires QueryLanguage JSONata",
                    )
    if "Default" in state:
        report.target(state["Default"], json_path_key(path, "Default"), scope)
