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


class Activity(msgspec.Struct):
    """An activity: Task states whose Resource is its ARN are run by external workers."""

    name: str
    activityArn: str
    createdAt: str


class ActivityList(msgspec.Struct):
    activities: list[Activity]
    next_cursor: str | None = None


class ActivityTask(msgspec.Struct):
    """One task handed to a worker by a poll: report it with its token."""

    taskToken: str
    input: msgspec.Raw
    # The same for every delivery of one attempt: side effects made once per key.
    idempotencyKey: str = ""

    @property
    def value(self) -> Any:
        """The task's input, decoded."""
        return msgspec.json.decode(self.input)


def json_value(raw: msgspec.Raw | None) -> Any:
    """An execution's ``input`` or ``output`` (kept as the server's JSON text), decoded;
    None for an output not there yet."""
    return None if raw is None else msgspec.json.decode(raw)
