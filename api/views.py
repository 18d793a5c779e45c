"""Response bodies built from what the command and query sides return.

The records are described by what the views read of them (Protocols), so the
API names no adapter type.

One rendering (issue 9, item 5): an execution's input and output are the JSON
text the store keeps (key order and number spelling as sent, no whitespace), the
same bytes in the start reply, GET, the listing and the stop reply; history
entries, the live feed and the export pass each event field's stored text
through (projections.history.event_details); timestamps are RFC 3339 UTC with
milliseconds and a Z; an absent value is ``null``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol
from uuid import UUID

import msgspec

from api.schemas import EventOut, ExecutionOut, WorkflowOut
from engine.core.events import CommittedEvent
from projections.executions import ExecutionRow
from projections.history import event_details, rfc3339
from projections.queries import state_document


class StartedExecution(Protocol):
    """What a start returns (engine.adapters.store.ExecutionRecord has it)."""

    @property
    def execution_id(self) -> UUID: ...
    @property
    def workflow(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def input_json(self) -> bytes: ...
    @property
    def started_at(self) -> dt.datetime: ...


class WorkflowDefinition(Protocol):
    """A stored workflow version (engine.adapters.store.WorkflowVersion has it)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def definition(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def type(self) -> str: ...


def execution_out(row: ExecutionRow) -> ExecutionOut:
    return ExecutionOut(
        execution_id=str(row.execution_id),
        workflow=row.workflow,
        version=row.version,
        name=row.name,
        status=row.status,
        input=msgspec.Raw(row.input.encode()),
        output=None if row.output is None else msgspec.Raw(row.output.encode()),
        error=row.error,
        cause=row.cause,
        started_at=rfc3339(row.started_at),
        stopped_at=None if row.stopped_at is None else rfc3339(row.stopped_at),
    )


def started_out(record: StartedExecution) -> ExecutionOut:
    """A just-started execution, straight from its start record."""
    return ExecutionOut(
        execution_id=str(record.execution_id),
        workflow=record.workflow,
        version=record.version,
        name=record.name,
        status="RUNNING",
        input=msgspec.Raw(record.input_json),
        output=None,
        error=None,
        cause=None,
        started_at=rfc3339(record.started_at),
        stopped_at=None,
    )


def event_out(event: CommittedEvent, include_data: bool = True) -> EventOut:
    return EventOut(
        seq=event.seq,
        type=event.type,
        timestamp=rfc3339(event.timestamp),
        details=event_details(event, include_data),
    )


def workflow_out(wf: WorkflowDefinition) -> WorkflowOut:
    return WorkflowOut(
        name=wf.name,
        version=wf.version,
        definition=wf.definition,
        created_at=rfc3339(wf.created_at),
        type="EXPRESS" if wf.type == "EXPRESS" else "STANDARD",
    )


def state_out(state: msgspec.Struct) -> dict[str, Any]:
    """An execution state (GET .../state): ``null`` for the times not known yet."""
    return state_document(state)
