"""Execution routes.

POST /v1/workflows/{name}/executions {"input": ..., "name": opt}
    -> 201 + execution once ExecutionStarted is committed; 200 + the existing
       execution for the same name and input; 409 for the same name with another input
GET  /v1/executions?workflow=&status=&limit=&cursor=  -> {"executions", "next_cursor"}
GET  /v1/executions/{id}                  -> execution (read model, else replay)
GET  /v1/executions/{id}/history?limit=&cursor= -> {"events", "next_cursor"}
POST /v1/executions/{id}/stop {"error", "cause"} (optional) -> execution after the stop
GET  /v1/executions/{id}/state?seq=N      -> the replayed ExecutionState

A malformed execution id is answered like an unknown one: 404 execution_not_found.
"""

from __future__ import annotations

import datetime as dt
from uuid import UUID

import msgspec
from aiohttp import web

from api.keys import POOL, SERVICE, SETTINGS, STORE
from api.responses import json_response
from api.schemas import (
    EventOut,
    ExecutionList,
    ExecutionOut,
    History,
    HistoryQuery,
    ListExecutionsQuery,
    StartExecution,
    StateQuery,
    StopExecution,
    decode_body,
    decode_cursor,
    decode_query,
    encode_cursor,
    parse_execution_id,
    rfc3339,
)
from api.workflows import workflow_name
from engine.errors import ExecutionNotFound, PayloadTooLarge
from engine.store import EventStore, ExecutionRecord, StoredEvent
from projections import executions as view
from steplog.logs import execution_id_var

routes = web.RouteTableDef()

_Keyset = tuple[dt.datetime, UUID]


def execution_out(row: view.ExecutionRow) -> ExecutionOut:
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


def started_out(record: ExecutionRecord) -> ExecutionOut:
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


def execution_id(request: web.Request) -> UUID:
    """The {id} path segment; also names the execution in this request's logs."""
    text = request.match_info["id"]
    parsed = parse_execution_id(text)
    if parsed is None:
        raise ExecutionNotFound(f"no execution {text!r}")
    execution_id_var.set(str(parsed))
    return parsed


async def replay_row(store: EventStore, eid: UUID) -> view.ExecutionRow:
    """The execution's row folded from its events: always current."""
    row = view.fold(await store.load(eid))
    if row is None:
        raise ExecutionNotFound(f"no execution {eid}")
    return row


async def current_row(request: web.Request, eid: UUID) -> view.ExecutionRow:
    """From the read model; by replay when the projection has no row yet."""
    row = await view.get_row(request.app[POOL], eid)
    return row if row is not None else await replay_row(request.app[STORE], eid)


@routes.post("/v1/workflows/{name}/executions")
async def start_execution(request: web.Request) -> web.Response:
    workflow = workflow_name(request)
    req = decode_body(await request.read(), StartExecution)
    limit = request.app[SETTINGS].max_payload_bytes
    size = len(bytes(req.input))
    if size > limit:
        raise PayloadTooLarge(f"execution input is {size} bytes; the limit is {limit}")
    record, created = await request.app[SERVICE].start(
        request.app[SETTINGS].namespace,
        workflow,
        msgspec.json.decode(req.input),
        req.name,
        dt.datetime.now(dt.UTC),
    )
    execution_id_var.set(str(record.execution_id))
    out = (
        started_out(record)
        if created
        else execution_out(await current_row(request, record.execution_id))
    )
    return json_response(
        out,
        status=201 if created else 200,
        headers={"Location": f"/v1/executions/{record.execution_id}"},
    )


@routes.get("/v1/executions")
async def list_executions(request: web.Request) -> web.Response:
    query = decode_query(request.query, ListExecutionsQuery)
    after: _Keyset | None = None if query.cursor is None else decode_cursor(query.cursor, _Keyset)
    page = await view.list_rows(
        request.app[POOL],
        namespace=request.app[SETTINGS].namespace,
        workflow=query.workflow,
        status=query.status,
        limit=query.limit,
        after=after,
    )
    last = page.rows[-1] if page.rows else None
    next_cursor = (
        encode_cursor((last.started_at, last.execution_id)) if page.more and last else None
    )
    return json_response(
        ExecutionList(executions=[execution_out(r) for r in page.rows], next_cursor=next_cursor)
    )


@routes.get("/v1/executions/{id}")
async def get_execution(request: web.Request) -> web.Response:
    eid = execution_id(request)
    return json_response(execution_out(await current_row(request, eid)))


def event_out(event: StoredEvent) -> EventOut:
    details = msgspec.json.decode(event.data)
    if isinstance(details, dict):
        details.pop("type", None)
    return EventOut(
        seq=event.seq, type=event.type, timestamp=rfc3339(event.timestamp), details=details
    )


@routes.get("/v1/executions/{id}/history")
async def get_history(request: web.Request) -> web.Response:
    eid = execution_id(request)
    query = decode_query(request.query, HistoryQuery)
    after: int = 0 if query.cursor is None else decode_cursor(query.cursor, int)
    store = request.app[STORE]
    events = await store.load(eid, after_seq=after, limit=query.limit + 1)
    if not events and await store.get_execution(eid) is None:
        raise ExecutionNotFound(f"no execution {eid}")
    page = events[: query.limit]
    more = len(events) > query.limit
    return json_response(
        History(
            events=[event_out(e) for e in page],
            next_cursor=encode_cursor(page[-1].seq) if more else None,
        )
    )


@routes.post("/v1/executions/{id}/stop")
async def stop_execution(request: web.Request) -> web.Response:
    eid = execution_id(request)
    req = decode_body(await request.read(), StopExecution)
    await request.app[SERVICE].stop(eid, req.error, req.cause, dt.datetime.now(dt.UTC))
    return json_response(execution_out(await replay_row(request.app[STORE], eid)))


@routes.get("/v1/executions/{id}/state")
async def get_state(request: web.Request) -> web.Response:
    eid = execution_id(request)
    query = decode_query(request.query, StateQuery)
    state = await request.app[SERVICE].state_at(eid, query.seq)
    return json_response(state)
