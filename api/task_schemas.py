"""Request and response types of the task callback and activity routes (api/tasks.py,
api/activities.py), in Step Functions' field names (camelCase) where AWS has them."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from api.schemas import Cause, Cursor, ErrorName, Limit, WorkflowName

# AWS's bounds on a task token (1-1024); steplog's own are shorter (engine.core.tasktokens).
TaskToken = Annotated[str, Meta(min_length=1, max_length=1024)]
# A worker's name, for the logs (AWS: workerName, up to 80 characters).
WorkerName = Annotated[str, Meta(max_length=80, pattern=r"^[^\x00-\x1f]*$")]
ActivityName = WorkflowName
# GetActivityTask waits up to 60 seconds.
WaitSeconds = Annotated[int, Meta(ge=0, le=60)]


class SendTaskSuccess(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    task_token: TaskToken
    # Kept raw: its size is checked before decoding (any JSON value).
    output: msgspec.Raw


class SendTaskFailure(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    task_token: TaskToken
    error: ErrorName | None = None
    cause: Cause | None = None


class SendTaskHeartbeat(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    task_token: TaskToken


class TaskReported(msgspec.Struct):
    """The empty answer of a callback (as AWS's): the outcome is committed."""


class CreateActivity(msgspec.Struct, forbid_unknown_fields=True):
    name: ActivityName


class ActivityOut(msgspec.Struct, rename="camel"):
    name: str
    activity_arn: str
    created_at: str


class ActivityList(msgspec.Struct):
    activities: list[ActivityOut]
    next_cursor: str | None


class ActivityListQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = 100
    cursor: Cursor | None = None


class PollActivity(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    worker_name: WorkerName = ""


class PollQuery(msgspec.Struct, forbid_unknown_fields=True):
    """``wait``: how long to wait for a task, in seconds (AWS waits up to 60)."""

    wait: WaitSeconds = 60


class ActivityTaskOut(msgspec.Struct, rename="camel"):
    task_token: str
    input: Any
    # The same for every delivery of one attempt (a redelivery after a worker vanished
    # too): a worker with side effects makes them once per key.
    idempotency_key: str
