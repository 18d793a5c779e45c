"""What the client sends and returns: the server's own msgspec types (api/schemas.py),
re-exported, plus the bodies of the task-token and activity routes (issue 12, items
2-3), written here after their published shapes."""

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


class Activity(msgspec.Struct, rename="camel"):
    """An activity: Task states whose Resource is its ARN are run by external workers.
    (The shape of api/task_schemas.py's ActivityOut.)"""

    name: str
    activity_arn: str
    created_at: str


class ActivityList(msgspec.Struct):
    activities: list[Activity]
    next_cursor: str | None = None


class ActivityTask(msgspec.Struct, rename="camel"):
    """One task handed to a worker by a poll (the shape of ActivityTaskOut): its input,
    the token to report it with, and an idempotency key that is the same for every
    delivery of one attempt (side effects made once per key)."""

    task_token: str
    input: Any
    idempotency_key: str = ""


def json_value(raw: msgspec.Raw | None) -> Any:
    """An execution's ``input`` or ``output`` (kept as the server's JSON text), decoded;
    None for an output not there yet."""
    return None if raw is None else msgspec.json.decode(raw)
