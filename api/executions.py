"""Execution routes.

POST /v1/workflows/{name}/executions {"input": ..., "name": opt}
    -> 201 + execution once ExecutionStarted is committed; 200 + the existing
       execution for the same name and input; 409 for the same name with another input
GET  /v1/executions?workflow=&version=&status=&name_prefix=&started_after=&started_before=
     &stopped_after=&stopped_before=&order=desc|asc&limit=&cursor=
                                          -> {"executions", "next_cursor"} (read model)
GET  /v1/executions/{id}                  -> execution (read model, else replay)
GET  /v1/executions/{id}/history?limit=&cursor=&reverse=&include_data=
                                          -> {"events", "next_cursor"}
GET  /v1/executions/{id}/history.jsonl?include_data= -> the whole history, JSON Lines
POST /v1/executions/{id}/stop {"error", "cause"} (optional) -> execution after the stop
GET  /v1/executions/{id}/state?seq=N      -> the replayed ExecutionState
GET  /v1/executions/{id}/state/diff?from=A&to=B -> events in (A, B] and RFC 6902 ops
(The live feed, GET /v1/executions/{id}/events, is in api/feed.py.)

A malformed execution id is answered like an unknown one: 404 execution_not_found.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web

from api.keys import POOL, SERVICE, SETTINGS, STORE
from api.problems import InvalidQuery
from api.responses import json_response
from api.schemas import (
    DiffQuery,
    EventOut,
    ExecutionList,
    ExecutionOut,
    ExportQuery,
    History,
    HistoryQuery,
    ListExecutionsQuery,
    StartExecution,
    StateDiff,
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
from engine.adapters.store import EventStore, ExecutionRecord, StoredEvent
from engine.core import jsondiff
from engine.errors import ExecutionNotFound, PayloadTooLarge
from engine.logcontext import execution_id_var
from engine.service import fold
from projections import executions as view

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


_ListCursor = tuple[dt.datetime, UUID, str]


@routes.get("/v1/executions")
async def list_executions(request: web.Request) -> web.Response:
    query = decode_query(request.query, ListExecutionsQuery)
    for low, high, name in (
        (query.started_after, query.started_before, "started"),
        (query.stopped_after, query.stopped_before, "stopped"),
    ):
        if low is not None and high is not None and low >= high:
            raise InvalidQuery(
                f"{name}_after must be before {name}_before",
                [(f"{name}_after", "not before the end of the range")],
            )
    after: _Keyset | None = None
    if query.cursor is not None:
        ts, eid, order = decode_cursor(query.cursor, _ListCursor)
        if order != query.order:
            raise InvalidQuery(
                f"cursor belongs to order={order}, not order={query.order}",
                [("cursor", "order differs")],
            )
        after = (ts, eid)
    page = await view.list_rows(
        request.app[POOL],
        namespace=request.app[SETTINGS].namespace,
        limit=query.limit,
        after=after,
        ascending=query.order == "asc",
        filters=view.Filters(
            workflow=query.workflow,
            version=query.version,
            status=query.status,
            name_prefix=query.name_prefix,
            started_after=query.started_after,
            started_before=query.started_before,
            stopped_after=query.stopped_after,
            stopped_before=query.stopped_before,
        ),
    )
    last = page.rows[-1] if page.rows else None
    next_cursor = (
        encode_cursor((last.started_at, last.execution_id, query.order))
        if page.more and last
        else None
    )
    return json_response(
        ExecutionList(executions=[execution_out(r) for r in page.rows], next_cursor=next_cursor)
    )


@routes.get("/v1/executions/{id}")
async def get_execution(request: web.Request) -> web.Response:
    eid = execution_id(request)
    return json_response(execution_out(await current_row(request, eid)))


# Event fields that carry execution data (left out with include_data=false).
DATA_FIELDS = ("input", "output", "branchInput", "items", "assignedVariables")


def event_out(event: StoredEvent, include_data: bool = True) -> EventOut:
    details = msgspec.json.decode(event.data)
    if isinstance(details, dict):
        details.pop("type", None)
        if not include_data:
            for name in DATA_FIELDS:
                details.pop(name, None)
    return EventOut(
        seq=event.seq, type=event.type, timestamp=rfc3339(event.timestamp), details=details
    )


async def require_execution(store: EventStore, eid: UUID) -> ExecutionRecord:
    record = await store.get_execution(eid)
    if record is None:
        raise ExecutionNotFound(f"no execution {eid}")
    return record


@routes.get("/v1/executions/{id}/history")
async def get_history(request: web.Request) -> web.Response:
    """Pages of events by seq (oldest first, or newest first with reverse=true);
    the cursor is the last seq returned, so pages never overlap or skip."""
    eid = execution_id(request)
    query = decode_query(request.query, HistoryQuery)
    cursor: int | None = None if query.cursor is None else decode_cursor(query.cursor, int)
    if cursor is not None and cursor < 0:
        raise InvalidQuery("cursor is not one this API returned", [("cursor", "invalid")])
    store = request.app[STORE]
    if query.reverse:
        upto = None if cursor is None else cursor - 1
        events = await store.load(eid, upto_seq=upto, limit=query.limit + 1, reverse=True)
    else:
        events = await store.load(eid, after_seq=cursor or 0, limit=query.limit + 1)
    if not events:
        await require_execution(store, eid)
    page = events[: query.limit]
    more = len(events) > query.limit
    return json_response(
        History(
            events=[event_out(e, query.include_data) for e in page],
            next_cursor=encode_cursor(page[-1].seq) if more else None,
        )
    )


EXPORT_PAGE = 1000
NDJSON = "application/x-ndjson"
_export_line = msgspec.json.Encoder()


class ExportLine(msgspec.Struct):
    """One line of a history export (JSON Lines)."""

    execution_id: str
    seq: int
    type: str
    timestamp: str
    details: dict[str, Any]


@routes.get("/v1/executions/{id}/history.jsonl")
async def export_history(request: web.Request) -> web.StreamResponse:
    """The whole history as JSON Lines, streamed in pages of EXPORT_PAGE events."""
    eid = execution_id(request)
    query = decode_query(request.query, ExportQuery)
    store = request.app[STORE]
    await require_execution(store, eid)
    response = web.StreamResponse(
        headers={
            "Content-Type": NDJSON,
            "Content-Disposition": f'attachment; filename="{eid}.jsonl"',
        }
    )
    await response.prepare(request)
    async for line in history_lines(store, eid, query.include_data):
        await response.write(line)
    await response.write_eof()
    return response


async def history_lines(
    store: EventStore, eid: UUID, include_data: bool = True
) -> AsyncIterator[bytes]:
    """An execution's events as JSON Lines (also `steplog export`)."""
    after = 0
    while events := await store.load(eid, after_seq=after, limit=EXPORT_PAGE):
        chunk = bytearray()
        for e in events:
            out = event_out(e, include_data)
            chunk += _export_line.encode(
                ExportLine(str(eid), out.seq, out.type, out.timestamp, out.details)
            )
            chunk += b"\n"
        yield bytes(chunk)
        after = events[-1].seq


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


@routes.get("/v1/executions/{id}/state/diff")
async def get_state_diff(request: web.Request) -> web.Response:
    """What changed between two seqs: the events in (from, to] and the RFC 6902 ops
    from the state at ``from`` to the state at ``to``. Both must exist; from <= to."""
    eid = execution_id(request)
    query = decode_query(request.query, DiffQuery)
    if query.from_seq > query.to_seq:
        raise InvalidQuery("from must not be after to", [("from", "after to")])
    events = await request.app[STORE].load(eid, upto_seq=query.to_seq)
    if not events:
        raise ExecutionNotFound(f"no execution {eid}")
    if len(events) < query.to_seq:
        raise InvalidQuery(
            f"the execution has {len(events)} events; to={query.to_seq} is past its end",
            [("to", "past the last event")],
        )
    before = fold(eid, events[: query.from_seq])
    after = fold(eid, events[query.from_seq :], before)
    return json_response(
        StateDiff(
            execution_id=str(eid),
            from_seq=query.from_seq,
            to_seq=query.to_seq,
            events=[event_out(e) for e in events[query.from_seq :]],
            patch=jsondiff.diff(msgspec.to_builtins(before), msgspec.to_builtins(after)),
        )
    )
