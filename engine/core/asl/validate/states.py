"""The fields of Task, Wait and Fail states."""

from __future__ import annotations

from typing import Any

from engine.core.asl.choice import parse_timestamp
from engine.core.asl.validate.fields import HTTP_INVOKE, HTTP_METHODS, JSONATA
from engine.core.asl.validate.report import Report, is_jsonata, json_path_key


def check_task(report: Report, state: dict[str, Any], path: str, language: str) -> None:
    """Resource, timeouts and heartbeat, JSONata Arguments."""
    resource = state.get("Resource")
    if not isinstance(resource, str) or not resource:
        report.fail(
            json_path_key(path, "Resource"),
            "Task Resource is required and must be a non-empty string",
        )
    report.exclusive(state, path, ("TimeoutSeconds", "TimeoutSecondsPath"), required=False)
    report.exclusive(state, path, ("HeartbeatSeconds", "HeartbeatSecondsPath"), required=False)
    timeout, heartbeat = state.get("TimeoutSeconds"), state.get("HeartbeatSeconds")
    if "TimeoutSeconds" in state:
        report.positive_int(timeout, json_path_key(path, "TimeoutSeconds"), language)
    if "HeartbeatSeconds" in state:
        report.positive_int(heartbeat, json_path_key(path, "HeartbeatSeconds"), language)
        if isinstance(timeout, int) and isinstance(heartbeat, int) and heartbeat >= timeout:
            report.fail(
                json_path_key(path, "HeartbeatSeconds"),
                "HeartbeatSeconds must be smaller than TimeoutSeconds",
            )
    if "Arguments" in state and language == JSONATA:
        args = state["Arguments"]
        if not isinstance(args, dict) and not is_jsonata(args):
            report.fail(
                json_path_key(path, "Arguments"),
                "Arguments must be an object or a JSONata expression",
            )
    if resource == HTTP_INVOKE:
        _check_http_task(report, state, path, language)


def _check_http_task(report: Report, state: dict[str, Any], path: str, language: str) -> None:
    """What an HTTP task's request needs, as far as a definition shows it: ApiEndpoint and
    Method (given or computed), a known Method, Authentication naming a ConnectionArn."""
    field = "Arguments" if language == JSONATA else "Parameters"
    where = json_path_key(path, field)
    template = state.get(field)
    if language == JSONATA and is_jsonata(template):
        return  # computed as a whole: checked when the task runs
    if not isinstance(template, dict):
        report.fail(where, f"an HTTP task needs {field} with ApiEndpoint and Method")
        return
    for name in ("ApiEndpoint", "Method"):
        if name not in template and f"{name}.$" not in template:
            report.fail(json_path_key(where, name), f"an HTTP task needs {name}")
    method = template.get("Method")
    if isinstance(method, str) and not is_jsonata(method) and method.upper() not in HTTP_METHODS:
        report.fail(
            json_path_key(where, "Method"),
            f"Method must be one of {', '.join(sorted(HTTP_METHODS))}",
        )
    auth = template.get("Authentication")
    if auth is not None and not (
        isinstance(auth, dict) and ("ConnectionArn" in auth or "ConnectionArn.$" in auth)
    ):
        report.fail(json_path_key(where, "Authentication"), "Authentication needs a ConnectionArn")


def check_wait(report: Report, state: dict[str, Any], path: str, language: str) -> None:
    """Exactly one of Seconds / SecondsPath / Timestamp / TimestampPath, well formed."""
    report.exclusive(
        state, path, ("Seconds", "SecondsPath", "Timestamp", "TimestampPath"), required=True
    )
    if "Seconds" in state:
        report.non_negative_int(state["Seconds"], json_path_key(path, "Seconds"), language)
    if "Timestamp" in state:
        ts = state["Timestamp"]
        if not (language == JSONATA and is_jsonata(ts)):
            if not isinstance(ts, str) or parse_timestamp(ts) is None:
                report.fail(
                    json_path_key(path, "Timestamp"),
                    "Timestamp must be an RFC 3339 timestamp string",
                )


def check_fail(report: Report, state: dict[str, Any], path: str, language: str) -> None:
    """Error / Cause and their paths: at most one of each pair, strings."""
    report.exclusive(state, path, ("Error", "ErrorPath"), required=False)
    report.exclusive(state, path, ("Cause", "CausePath"), required=False)
    for field in ("Error", "Cause"):
        if field in state and not isinstance(state[field], str):
            report.fail(json_path_key(path, field), f"{field} must be a string")
