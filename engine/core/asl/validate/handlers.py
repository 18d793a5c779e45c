"""Retry and Catch: ErrorEquals lists, retrier ranges, catcher fields and targets."""

from __future__ import annotations

from typing import Any

from engine.core.asl.validate.fields import (
    CATCHER_FIELDS,
    JSONATA,
    JSONPATH,
    RETRIER_FIELDS,
    STATES_ALL,
)
from engine.core.asl.validate.paths import check_path
from engine.core.asl.validate.report import Report, is_number, json_path_key


def check_handlers(
    report: Report, field: str, value: Any, path: str, scope: dict[str, Any], language: str
) -> None:
    """A Retry or Catch array (`field` says which)."""
    if not isinstance(value, list):
        report.fail(path, f"{field} must be an array")
        return
    for i, handler in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(handler, dict):
            report.fail(where, f"each {field} entry must be an object")
            continue
        _check_error_equals(report, handler, where, last=i == len(value) - 1)
        if field == "Retry":
            _check_retrier(report, handler, where)
        else:
            _check_catcher(report, handler, where, scope, language)


def _check_error_equals(report: Report, handler: dict[str, Any], path: str, last: bool) -> None:
    errors = handler.get("ErrorEquals")
    where = json_path_key(path, "ErrorEquals")
    if not isinstance(errors, list) or not errors:
        report.fail(where, "ErrorEquals is required and must be a non-empty array")
        return
    for j, name in enumerate(errors):
        if not isinstance(name, str):
            report.fail(f"{where}[{j}]", "error names must be strings")
    if STATES_ALL in errors:
        if len(errors) > 1:
            report.fail(where, "States.ALL must appear alone in ErrorEquals")
        if not last:
            report.fail(where, "States.ALL must appear only in the last entry")


def _check_retrier(report: Report, retrier: dict[str, Any], path: str) -> None:
    for field in retrier:
        if field not in RETRIER_FIELDS:
            report.fail(json_path_key(path, field), f"unknown field {field!r} in a retrier")
    if "IntervalSeconds" in retrier:
        report.positive_int(retrier["IntervalSeconds"], json_path_key(path, "IntervalSeconds"))
    if "MaxDelaySeconds" in retrier:
        report.positive_int(retrier["MaxDelaySeconds"], json_path_key(path, "MaxDelaySeconds"))
    if "MaxAttempts" in retrier:
        report.non_negative_int(retrier["MaxAttempts"], json_path_key(path, "MaxAttempts"))
    if "BackoffRate" in retrier:
        rate = retrier["BackoffRate"]
        if not is_number(rate) or rate < 1.0:
            report.fail(json_path_key(path, "BackoffRate"), "BackoffRate must be a number >= 1.0")
    if "JitterStrategy" in retrier and retrier["JitterStrategy"] not in ("FULL", "NONE"):
        report.fail(json_path_key(path, "JitterStrategy"), "JitterStrategy must be FULL or NONE")


def _check_catcher(
    report: Report, catcher: dict[str, Any], path: str, scope: dict[str, Any], language: str
) -> None:
    for field in catcher:
        where = json_path_key(path, field)
        if field not in CATCHER_FIELDS:
            report.fail(where, f"unknown field {field!r} in a catcher")
        elif language == JSONATA and field == "ResultPath":
            report.fail(where, "field 'ResultPath' is not supported with QueryLanguage JSONata")
        elif language == JSONPATH and field == "Output":
            report.fail(where, "field 'Output' requires QueryLanguage JSONata")
    if "Next" not in catcher:
        report.fail(json_path_key(path, "Next"), "a catcher requires Next")
    else:
        report.target(catcher["Next"], json_path_key(path, "Next"), scope)
    if "ResultPath" in catcher and language == JSONPATH:
        check_path(
            report,
            catcher["ResultPath"],
            json_path_key(path, "ResultPath"),
            reference="result",
            nullable=True,
        )
