"""What the client sends and returns: the server's own msgspec types (api/schemas.py,
api/task_schemas.py), re-exported."""

from __future__ import annotations

from typing import Any

import msgspec

from api.schemas import (
    EventOut,
    ExecutionList,
    ExecutionOut,
    History,
    ValidationResult,
    WorkflowList,
    WorkflowOut,
)
from api.task_schemas import ActivityList
from api.task_schemas import ActivityOut as Activity
from api.task_schemas import ActivityTaskOut as ActivityTask

__all__ = [
    "Activity",
    "ActivityList",
    "ActivityTask",
    "EventOut",
    "ExecutionList",
    "ExecutionOut",
    "History",
    "ValidationResult",
    "WorkflowList",
    "WorkflowOut",
    "json_value",
]


def json_value(raw: msgspec.Raw | None) -> Any:
    """An execution's ``input`` or ``output`` (kept as the server's JSON text), decoded;
    None for an output not there yet."""
    return None if raw is None else msgspec.json.decode(raw)
