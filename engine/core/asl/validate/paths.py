"""Paths and payload templates: every JSONPath, ``.$`` key and intrinsic call
of a state compiles as the engine will compile it."""

from __future__ import annotations

from typing import Any

from engine.core.asl.intrinsics import IntrinsicSyntaxError, compile_intrinsic, is_intrinsic
from engine.core.asl.jsonpath import PathSyntaxError, compile_path
from engine.core.asl.validate.fields import JSONPATH
from engine.core.asl.validate.report import Report, json_path_key


def check_path(
    report: Report, value: Any, path: str, *, reference: str | None, nullable: bool
) -> None:
    """A JSONPath field; `reference` is "result" (ResultPath), "definite" (`*Path`) or None."""
    if value is None and nullable:
        return
    if not isinstance(value, str):
        report.fail(path, "must be a JSONPath string" + (" or null" if nullable else ""))
        return
    try:
        compiled = compile_path(value)
    except PathSyntaxError as e:
        report.fail(path, f"invalid JSONPath {value!r}: {e}")
        return
    if reference == "result" and not compiled.is_reference:
        report.fail(path, f"must be a reference path into the state input: {value!r}")
    elif reference == "definite" and not compiled.is_definite:
        report.fail(path, f"must be a reference path (no filters, wildcards or slices): {value!r}")


def check_path_or_intrinsic(report: Report, value: Any, path: str) -> None:
    """A field holding a JSONPath or an intrinsic function call."""
    if isinstance(value, str) and is_intrinsic(value):
        _check_intrinsic(report, value, path)
    else:
        check_path(report, value, path, reference=None, nullable=False)


def _check_intrinsic(report: Report, text: str, path: str) -> None:
    try:
        compile_intrinsic(text)
    except IntrinsicSyntaxError as e:
        report.fail(path, f"invalid intrinsic function {text!r}: {e}")


def check_state_paths(report: Report, state: dict[str, Any], path: str, language: str) -> None:
    """Every path field of a JSONPath state (JSONata states have none)."""
    if language != JSONPATH:
        return  # JSONPath-only fields are already reported for JSONata states
    for field in ("InputPath", "OutputPath"):
        if field in state:
            check_path(
                report, state[field], json_path_key(path, field), reference=None, nullable=True
            )
    if "ResultPath" in state:
        check_path(
            report,
            state["ResultPath"],
            json_path_key(path, "ResultPath"),
            reference="result",
            nullable=True,
        )
    for field in (
        "ItemsPath",
        "SecondsPath",
        "TimestampPath",
        "TimeoutSecondsPath",
        "HeartbeatSecondsPath",
        "MaxConcurrencyPath",
        "ToleratedFailurePercentagePath",
        "ToleratedFailureCountPath",
    ):
        if field in state:
            check_path(
                report,
                state[field],
                json_path_key(path, field),
                reference="definite",
                nullable=False,
            )
    for field in ("ErrorPath", "CausePath"):
        if field in state:
            check_path_or_intrinsic(report, state[field], json_path_key(path, field))


def check_template(report: Report, value: Any, path: str) -> None:
    """A Parameters-like payload: every `.$` key holds a path or an intrinsic call."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = json_path_key(path, key)
            if key.endswith(".$"):
                if not isinstance(item, str):
                    report.fail(
                        where,
                        "a field ending in .$ must hold a path or intrinsic function string",
                    )
                else:
                    check_path_or_intrinsic(report, item, where)
            else:
                check_template(report, item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_template(report, item, f"{path}[{i}]")
