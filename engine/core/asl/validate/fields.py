"""Which fields each part of a definition allows, per state type and query
language: pure data, read by the checks in the other modules of this package."""

from __future__ import annotations

from typing import Final

JSONPATH: Final = "JSONPath"
JSONATA: Final = "JSONata"
MAX_STATE_NAME: Final = 80
STATES_ALL: Final = "States.ALL"
# The built-in HTTP task (engine/loops/http_task.py) and the methods it sends.
HTTP_INVOKE: Final = "arn:aws:states:::http:invoke"
HTTP_METHODS: Final = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})

TOP_FIELDS: Final = frozenset(
    {"Comment", "StartAt", "States", "Version", "TimeoutSeconds", "QueryLanguage"}
)
BRANCH_FIELDS: Final = frozenset({"Comment", "StartAt", "States"})
PROCESSOR_FIELDS: Final = frozenset({"Comment", "StartAt", "States", "ProcessorConfig"})

_COMMON: Final = frozenset({"Type", "Comment", "QueryLanguage"})
_FLOW: Final = frozenset({"Next", "End"})
_IO: Final = frozenset({"InputPath", "OutputPath", "Output"})
_RESULT: Final = frozenset({"ResultPath", "ResultSelector"})
_ERRORS: Final = frozenset({"Retry", "Catch"})

STATE_FIELDS: Final[dict[str, frozenset[str]]] = {
    "Pass": _COMMON | _FLOW | _IO | {"Result", "ResultPath", "Parameters", "Assign"},
    "Task": _COMMON
    | _FLOW
    | _IO
    | _RESULT
    | _ERRORS
    | {
        "Resource",
        "Parameters",
        "Arguments",
        "Assign",
        "Credentials",
        "TimeoutSeconds",
        "TimeoutSecondsPath",
        "HeartbeatSeconds",
        "HeartbeatSecondsPath",
    },
    "Choice": _COMMON | _IO | {"Choices", "Default", "Assign"},
    "Wait": _COMMON
    | _FLOW
    | _IO
    | {"Seconds", "SecondsPath", "Timestamp", "TimestampPath", "Assign"},
    "Succeed": _COMMON | _IO,
    "Fail": _COMMON | {"Error", "ErrorPath", "Cause", "CausePath"},
    "Parallel": _COMMON
    | _FLOW
    | _IO
    | _RESULT
    | _ERRORS
    | {"Branches", "Parameters", "Arguments", "Assign"},
    "Map": _COMMON
    | _FLOW
    | _IO
    | _RESULT
    | _ERRORS
    | {
        "ItemProcessor",
        "Iterator",
        "ItemsPath",
        "Items",
        "ItemSelector",
        "Parameters",
        "ItemReader",
        "ItemBatcher",
        "ResultWriter",
        "Label",
        "Assign",
        "MaxConcurrency",
        "MaxConcurrencyPath",
        "ToleratedFailurePercentage",
        "ToleratedFailurePercentagePath",
        "ToleratedFailureCount",
        "ToleratedFailureCountPath",
    },
}
TERMINAL_TYPES: Final = frozenset({"Choice", "Succeed", "Fail"})

# Fields that only one query language accepts.
JSONPATH_ONLY: Final = frozenset(
    {
        "InputPath",
        "OutputPath",
        "Parameters",
        "ResultSelector",
        "ResultPath",
        "ItemsPath",
        "SecondsPath",
        "TimestampPath",
        "TimeoutSecondsPath",
        "HeartbeatSecondsPath",
        "MaxConcurrencyPath",
        "ToleratedFailurePercentagePath",
        "ToleratedFailureCountPath",
        "ErrorPath",
        "CausePath",
    }
)
JSONATA_ONLY: Final = frozenset({"Arguments", "Output", "Items"})

RETRIER_FIELDS: Final = frozenset(
    {
        "ErrorEquals",
        "IntervalSeconds",
        "MaxAttempts",
        "BackoffRate",
        "MaxDelaySeconds",
        "JitterStrategy",
        "Comment",
    }
)
CATCHER_FIELDS: Final = frozenset(
    {"ErrorEquals", "Next", "ResultPath", "Comment", "Assign", "Output"}
)
