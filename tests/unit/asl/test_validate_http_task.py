"""Given an HTTP task (arn:aws:states:::http:invoke), when validated, then what its
request needs is checked at registration: ApiEndpoint and Method, a known Method,
Authentication with a ConnectionArn."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.asl.validate import validate_definition

HTTP = "arn:aws:states:::http:invoke"


def _task(**fields: Any) -> dict[str, Any]:
    return {
        "StartAt": "S",
        "States": {"S": {"Type": "Task", "Resource": HTTP, "End": True, **fields}},
    }


@pytest.mark.parametrize(
    "definition",
    [
        _task(Parameters={"ApiEndpoint": "https://example.com", "Method": "GET"}),
        _task(Parameters={"ApiEndpoint.$": "$.url", "Method.$": "$.method"}),
        _task(
            Parameters={
                "ApiEndpoint": "https://example.com",
                "Method": "post",
                "Authentication": {"ConnectionArn": "billing"},
            }
        ),
        _task(QueryLanguage="JSONata", Arguments="{% $states.input.request %}"),
        _task(QueryLanguage="JSONata", Arguments={"ApiEndpoint": "{% $url %}", "Method": "PUT"}),
    ],
)
def test_well_formed_http_tasks_validate(definition: dict[str, Any]) -> None:
    assert validate_definition(definition) == []


@pytest.mark.parametrize(
    ("definition", "path", "message"),
    [
        (_task(), "$.States.S.Parameters", "needs Parameters with ApiEndpoint and Method"),
        (
            _task(Parameters={"Method": "GET"}),
            "$.States.S.Parameters.ApiEndpoint",
            "needs ApiEndpoint",
        ),
        (
            _task(Parameters={"ApiEndpoint": "https://x"}),
            "$.States.S.Parameters.Method",
            "needs Method",
        ),
        (
            _task(Parameters={"ApiEndpoint": "https://x", "Method": "FETCH"}),
            "$.States.S.Parameters.Method",
            "Method must be one of",
        ),
        (
            _task(Parameters={"ApiEndpoint": "https://x", "Method": "GET", "Authentication": {}}),
            "$.States.S.Parameters.Authentication",
            "needs a ConnectionArn",
        ),
        (
            _task(QueryLanguage="JSONata", Arguments={"Method": "GET"}),
            "$.States.S.Arguments.ApiEndpoint",
            "needs ApiEndpoint",
        ),
    ],
)
def test_http_tasks_missing_their_request_are_refused(
    definition: dict[str, Any], path: str, message: str
) -> None:
    errors = validate_definition(definition)
    assert [e.path for e in errors] == [path]
    assert message in errors[0].message
