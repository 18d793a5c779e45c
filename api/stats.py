"""Workflow statistics from the read models.

GET /v1/workflows/{name}/stats?from=&to=&version=
    -> {"workflow", "version", "from", "to",
        "executions": {"total", "by_status": {...}, "duration_ms": {"p50", "p95", "p99"}},
        "states": [{"name", "entered", "succeeded", "failed", "aborted", "running",
                    "retried", "failed_attempts", "duration_ms": {...}}]}
The window is [from, to) over start times (executions) and entry times (state
visits); by default the DEFAULT_WINDOW before now. Durations are milliseconds,
over what has ended; null when nothing has.
"""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from api.auth import namespace_of
from api.keys import QUERIES
from api.params import workflow_name
from api.problems import InvalidQuery
from api.responses import json_response
from api.schemas import StatsQuery, WorkflowStats, decode_query
from projections.history import rfc3339

DEFAULT_WINDOW = dt.timedelta(hours=24)

routes = web.RouteTableDef()


@routes.get("/v1/workflows/{name}/stats")
async def workflow_stats(request: web.Request) -> web.Response:
    name = workflow_name(request)
    query = decode_query(request.query, StatsQuery)
    end = query.end or request.app[QUERIES].now()
    start = query.start or end - DEFAULT_WINDOW
    if start >= end:
        raise InvalidQuery("from must be before to", [("from", "not before to")])
    stats = await request.app[QUERIES].workflow_stats(
        namespace_of(request), name, start, end, query.version
    )
    return json_response(
        WorkflowStats(
            workflow=name,
            version=query.version,
            start=rfc3339(start),
            end=rfc3339(end),
            executions=stats.executions,
            states=stats.states,
        )
    )
