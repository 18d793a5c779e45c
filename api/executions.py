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
     (PostgreSQL failing once it streams: the connection is cut, the body incomplete)
POST /v1/executions/{id}/stop {"error", "cause"} (optional) -> execution after the stop
GET  /v1/executions/{id}/state?seq=N      -> the replayed ExecutionState
GET  /v1/executions/{id}/state/diff?from=A&to=B -> events in (A, B] and RFC 6902 ops
     (a seq or to past the last event: 400 invalid_request naming the parameter)
(The live feed, GET /v1/executions/{id}/events, is in api/feed.py.)

A malformed execution id is answered like an unknown one: 404 execution_not_found.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Literal
from uuid import UUID

from aiohttp import web

from api.auth import actor_of, namespace_of
from api.keys import ACCESS, COMMANDS, CONFIG, QUERIES
from api.middleware import request_traceparent
from api.params import execution_id, workflow_name
from api.problems import InvalidQuery
from api.responses import json_response
from api.schemas import (
    DiffQuery,
    ExecutionList,
    ExportQuery,
    History,
    HistoryQuery,
    ListExecutionsQuery,
    SeqOrZero,
    StartExecution,
    StateDiff,
    StateQuery,
    StopExecution,
    Timestamp,
    decode_body,
    decode_cursor,
    decode_input,
    decode_query,
    encode_cursor,
)
from api.views import event_out, execution_out, started_out, state_out
from engine.errors import PayloadTooLarge, Unavailable
from engine.logcontext import execution_id_var
from projections.executions import Filters

log = logging.getLogger("steplog.api")
routes = web.RouteTableDef()


@routes.post("/v1/workflows/{name}/executions")
async def start_execution(request: web.Request) -> web.Response:
    workflow = workflow_name(request)
    req = decode_body(await request.read(), StartExecution)
    limit = request.app[CONFIG].max_payload_bytes
    size = len(bytes(req.input))
    if size > limit:
        raise PayloadTooLarge(f"execution input is {size} bytes; the limit is {limit}")
    decode_input(bytes(req.input))  # refuses what no JSON parser takes (1e400, surrogates)
    record, created, status, events = await request.app[COMMANDS].start(
        namespace_of(request),
        workflow,
        req.input,  # kept as sent (engine.adapters.store.json_as_sent)
        req.name,
        # No time given: the command side stamps it by PostgreSQL's clock.
        trace_context=request_traceparent(),
    )
    execution_id_var.set(str(record.execution_id))
    # A start answers what it committed: an execution its first decision already ended
    # (EngineService.start) with its output, folded from the events it committed; a
    # repeated start (created nothing) with the execution as it is now.
    ended = (
        request.app[QUERIES].started_row(record.execution_id, events)
        if created and status != "RUNNING"
        else None
    )
    if ended is not None:
        out = execution_out(ended)
    elif created and status == "RUNNING":
        out = started_out(record)
    else:
        out = execution_out(
            await request.app[QUERIES].execution(namespace_of(request), record.execution_id)
        )
    return json_response(
        out,
        status=201 if created else 200,
        headers={"Location": f"/v1/executions/{record.execution_id}"},
    )


_ListCursor = tuple[Timestamp, UUID, Literal["desc", "asc"]]


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
    after: tuple[dt.datetime, UUID] | None = None
    if query.cursor is not None:
        ts, eid, order = decode_cursor(query.cursor, _ListCursor)
        if order != query.order:
            raise InvalidQuery(
                f"cursor belongs to order={order}, not order={query.order}",
                [("cursor", "order differs")],
            )
        after = (ts, eid)
    page = await request.app[QUERIES].list_executions(
        namespace_of(request),
        limit=query.limit,
        after=after,
        ascending=query.order == "asc",
        filters=Filters(
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
    return json_response(
        execution_out(await request.app[QUERIES].execution(namespace_of(request), eid))
    )


@routes.get("/v1/executions/{id}/history")
async def get_history(request: web.Request) -> web.Response:
    """Pages of events by seq (oldest first, or newest first with reverse=true);
    the cursor is the last seq returned, so pages never overlap or skip."""
    eid = execution_id(request)
    query = decode_query(request.query, HistoryQuery)
    cursor: int | None = None if query.cursor is None else decode_cursor(query.cursor, SeqOrZero)
    page = await request.app[QUERIES].history(
        namespace_of(request), eid, limit=query.limit, cursor=cursor, reverse=query.reverse
    )
    return json_response(
        History(
            events=[event_out(e, query.include_data) for e in page.events],
            next_cursor=encode_cursor(page.events[-1].seq) if page.more else None,
        )
    )


NDJSON = "application/x-ndjson"


@routes.get("/v1/executions/{id}/history.jsonl")
async def export_history(request: web.Request) -> web.StreamResponse:
    """The whole history as JSON Lines, streamed in pages of events."""
    eid = execution_id(request)
    query = decode_query(request.query, ExportQuery)
    queries = request.app[QUERIES]
    await queries.require_execution(namespace_of(request), eid)
    response = web.StreamResponse(
        headers={
            "Content-Type": NDJSON,
            "Content-Disposition": f'attachment; filename="{eid}.jsonl"',
        }
    )
    await response.prepare(request)
    try:
        async for chunk in queries.export(eid, query.include_data):
            await response.write(chunk)
    except Unavailable as exc:
        # The 200 is out: the connection is cut before the body's last chunk, so the
        # client sees an incomplete body (and retries) rather than a shorter history.
        log.warning("history export of %s cut short: %r", eid, exc.__cause__ or exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


@routes.post("/v1/executions/{id}/stop")
async def stop_execution(request: web.Request) -> web.Response:
    eid = execution_id(request)
    req = decode_body(await request.read(), StopExecution)
    namespace = namespace_of(request)
    state = await request.app[COMMANDS].stop(eid, req.error, req.cause, namespace=namespace)
    # Audited right after the stop is committed (the stop is an event, not a row here).
    await request.app[ACCESS].record(
        actor_of(request), "execution.stop", str(eid), {"status": state.status}
    )
    return json_response(
        execution_out(await request.app[QUERIES].replayed_execution(namespace, eid))
    )


@routes.get("/v1/executions/{id}/state")
async def get_state(request: web.Request) -> web.Response:
    eid = execution_id(request)
    query = decode_query(request.query, StateQuery)
    state = await request.app[QUERIES].state_at(namespace_of(request), eid, query.seq)
    # The rule of state/diff's ``to``: a seq past the last event is a 400, not the end.
    if query.seq is not None and state.seq < query.seq:
        raise InvalidQuery(
            f"the execution has {state.seq} events; seq={query.seq} is past its end",
            [("seq", "past the last event")],
        )
    return json_response(state_out(state))


@routes.get("/v1/executions/{id}/state/diff")
async def get_state_diff(request: web.Request) -> web.Response:
    """What changed between two seqs: the events in (from, to] and the RFC 6902 ops
    from the state at ``from`` to the state at ``to``. Both must exist; from <= to."""
    eid = execution_id(request)
    query = decode_query(request.query, DiffQuery)
    if query.from_seq > query.to_seq:
        raise InvalidQuery("from must not be after to", [("from", "after to")])
    queries = request.app[QUERIES]
    events = await queries.events_upto(namespace_of(request), eid, query.to_seq)
    if len(events) < query.to_seq:
        raise InvalidQuery(
            f"the execution has {len(events)} events; to={query.to_seq} is past its end",
            [("to", "past the last event")],
        )
    return json_response(
        StateDiff(
            execution_id=str(eid),
            from_seq=query.from_seq,
            to_seq=query.to_seq,
            events=[event_out(e) for e in events[query.from_seq :]],
            patch=queries.state_patch(eid, events, query.from_seq),
        )
    )
