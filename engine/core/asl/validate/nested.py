"""Parallel and Map states: their nested machines and Map's own fields.

A nested machine is checked by the caller's ``machine`` function, passed in,
so that this module and the machine checks do not import each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.core.asl.validate.fields import BRANCH_FIELDS, JSONATA, PROCESSOR_FIELDS
from engine.core.asl.validate.report import Report, is_jsonata, is_number, json_path_key

# (report, machine document, json path, allowed top fields, query language)
MachineCheck = Callable[[Report, Any, str, frozenset[str], str], None]


def check_parallel(
    report: Report, state: dict[str, Any], path: str, language: str, machine: MachineCheck
) -> None:
    """Every branch as a machine of its own."""
    branches = state.get("Branches")
    where = json_path_key(path, "Branches")
    if not isinstance(branches, list) or not branches:
        report.fail(where, "Branches is required and must be a non-empty array")
        return
    for i, branch in enumerate(branches):
        machine(report, branch, f"{where}[{i}]", BRANCH_FIELDS, language)


def check_map(
    report: Report, state: dict[str, Any], path: str, language: str, machine: MachineCheck
) -> None:
    """The item processor as a machine of its own, and the Map fields."""
    report.exclusive(state, path, ("ItemProcessor", "Iterator"), required=True)
    report.exclusive(state, path, ("ItemSelector", "Parameters"), required=False)
    report.exclusive(state, path, ("MaxConcurrency", "MaxConcurrencyPath"), required=False)
    report.exclusive(
        state,
        path,
        ("ToleratedFailurePercentage", "ToleratedFailurePercentagePath"),
        required=False,
    )
    report.exclusive(
        state, path, ("ToleratedFailureCount", "ToleratedFailureCountPath"), required=False
    )
    for field in ("ItemProcessor", "Iterator"):
        if field in state:
            processor = state[field]
            machine(report, processor, json_path_key(path, field), PROCESSOR_FIELDS, language)
            if isinstance(processor, dict) and "ProcessorConfig" in processor:
                _check_processor_config(
                    report,
                    processor["ProcessorConfig"],
                    json_path_key(json_path_key(path, field), "ProcessorConfig"),
                )
    if "MaxConcurrency" in state:
        report.non_negative_int(
            state["MaxConcurrency"], json_path_key(path, "MaxConcurrency"), language
        )
    if "ToleratedFailureCount" in state:
        report.non_negative_int(
            state["ToleratedFailureCount"],
            json_path_key(path, "ToleratedFailureCount"),
            language,
        )
    if "ToleratedFailurePercentage" in state:
        value = state["ToleratedFailurePercentage"]
        if not (language == JSONATA and is_jsonata(value)) and (
            not is_number(value) or not 0 <= value <= 100
        ):
            report.fail(
                json_path_key(path, "ToleratedFailurePercentage"),
                "must be a number between 0 and 100",
            )
    if "Label" in state:
        label = state["Label"]
        if not isinstance(label, str) or len(label) > 40:
            report.fail(
                json_path_key(path, "Label"), "Label must be a string of at most 40 characters"
            )
    if "Items" in state and language == JSONATA:
        items = state["Items"]
        if not isinstance(items, list) and not is_jsonata(items):
            report.fail(
                json_path_key(path, "Items"), "Items must be an array or a JSONata expression"
            )


def _check_processor_config(report: Report, config: Any, path: str) -> None:
    if not isinstance(config, dict):
        report.fail(path, "ProcessorConfig must be an object")
        return
    for field, value in config.items():
        where = json_path_key(path, field)
        if field == "Mode":
            if value not in ("INLINE", "DISTRIBUTED"):
                report.fail(where, "Mode must be INLINE or DISTRIBUTED")
        elif field == "ExecutionType":
            if value not in ("STANDARD", "EXPRESS"):
                report.fail(where, "ExecutionType must be STANDARD or EXPRESS")
        else:
            report.fail(where, f"unknown field {field!r}")
