"""steplog's Python client: `AsyncClient` (asyncio) and `Client` (blocking), typed with
the server's own msgspec types, and `ActivityWorker` for activities run in Python.
See steplog/client/aio.py for the calls and their retry rules."""

from steplog.client.aio import AsyncClient
from steplog.client.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    SteplogClientError,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
)
from steplog.client.sync import Client, SyncActivityWorker
from steplog.client.types import (
    Activity,
    ActivityTask,
    EventOut,
    ExecutionList,
    ExecutionOut,
    History,
    WorkflowOut,
    json_value,
)
from steplog.client.worker import ActivityFailure, ActivityHandler, ActivityWorker

__all__ = [
    "Activity",
    "ActivityFailure",
    "ActivityHandler",
    "ActivityTask",
    "ActivityWorker",
    "AsyncClient",
    "Client",
    "Conflict",
    "EventOut",
    "ExecutionList",
    "ExecutionOut",
    "Forbidden",
    "History",
    "InvalidRequest",
    "NotFound",
    "RateLimited",
    "ServerError",
    "SteplogClientError",
    "SyncActivityWorker",
    "Unauthenticated",
    "Unavailable",
    "WaitTimeout",
    "WorkflowOut",
    "json_value",
]
