"""The triggers that move an execution: what decide is asked to react to.

Each carries ``now``, the one reading of the clock the decision records (events
take it as their timestamp). The runtime builds them from stream entries, the
API from requests, replay from recorded events.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec


class Begin(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    now: dt.datetime


class TaskCompleted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    task_id: str
    output: Any = None
    now: dt.datetime


class TaskErrored(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    task_id: str
    error: str | None = None
    cause: str | None = None
    now: dt.datetime


class TaskHeartbeat(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A worker reports that a task attempt is still running (HeartbeatSeconds)."""

    task_id: str
    now: dt.datetime


class TimerFired(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    timer_id: str
    now: dt.datetime


class StopRequested(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    error: str | None = None
    cause: str | None = None
    now: dt.datetime


class FailRequested(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The engine fails the execution: one of its triggers could not be decided or
    recorded for a reason of the execution's own (data the store refuses, a definition
    that no longer compiles), or kept failing past the delivery limit. Retrying would
    fail the same way, so the execution ends with ``error`` (States.Runtime) instead of
    staying RUNNING."""

    error: str
    cause: str | None = None
    now: dt.datetime


Trigger = (
    Begin | TaskCompleted | TaskErrored | TaskHeartbeat | TimerFired | StopRequested | FailRequested
)
