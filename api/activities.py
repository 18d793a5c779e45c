"""Activity routes: workers in any language (Step Functions' activities).

POST   /v1/activities {"name"}          -> 201 {"name","activityArn","createdAt"} (200: exists)
GET    /v1/activities?limit=&cursor=    -> {"activities": [...], "next_cursor"}
GET    /v1/activities/{name}            -> the activity
DELETE /v1/activities/{name}            -> the activity as it was
POST   /v1/activities/{name}/poll?wait=0..60 {"workerName"?}
       -> 200 {"taskToken","input","idempotencyKey"}, or 204 when no task came in time

A Task whose Resource is the activityArn is handed to one poller; it reports with the
task routes (api/tasks.py) and the token. See engine/tasks.py for redelivery.
"""

from __future__ import annotations

from aiohttp import web

from api import deadline
from api.auth import namespace_of
from api.keys import COMMANDS, TASKS
from api.responses import json_response
from api.schemas import WORKFLOW_NAME, decode_body, decode_cursor, decode_query, encode_cursor
from api.task_schemas import (
    ActivityList,
    ActivityListQuery,
    ActivityOut,
    ActivityTaskOut,
    CreateActivity,
    PollActivity,
    PollQuery,
)
from engine.errors import ActivityNotFound, Unavailable
from engine.tasks import Activity, Tasks
from projections.history import rfc3339

routes = web.RouteTableDef()


def _tasks(request: web.Request) -> Tasks:
    tasks = request.app.get(TASKS)
    if tasks is None:
        raise Unavailable("activities are not served by this application")
    return tasks


def _name(request: web.Request) -> str:
    """The {name} segment; a malformed one is answered like an unknown activity."""
    name = request.match_info["name"]
    if not WORKFLOW_NAME.fullmatch(name):
        raise ActivityNotFound(f"no activity {name!r}")
    return name


def _out(request: web.Request, namespace: str, activity: Activity) -> ActivityOut:
    return ActivityOut(
        name=activity.name,
        activity_arn=request.app[COMMANDS].arns.activity(namespace, activity.name),
        created_at=rfc3339(activity.created_at),
    )


@routes.post("/v1/activities")
async def create_activity(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), CreateActivity)
    namespace = namespace_of(request)
    activity, created = await _tasks(request).create_activity(namespace, req.name)
    return json_response(
        _out(request, namespace, activity),
        status=201 if created else 200,
        headers={"Location": f"/v1/activities/{activity.name}"},
    )


@routes.get("/v1/activities")
async def list_activities(request: web.Request) -> web.Response:
    query = decode_query(request.query, ActivityListQuery)
    after = "" if query.cursor is None else decode_cursor(query.cursor, str)
    namespace = namespace_of(request)
    rows = await _tasks(request).list_activities(namespace, after, query.limit + 1)
    page = rows[: query.limit]
    more = len(rows) > query.limit
    return json_response(
        ActivityList(
            activities=[_out(request, namespace, a) for a in page],
            next_cursor=encode_cursor(page[-1].name) if more else None,
        )
    )


@routes.get("/v1/activities/{name}")
async def get_activity(request: web.Request) -> web.Response:
    namespace = namespace_of(request)
    activity = await _tasks(request).activity(namespace, _name(request))
    return json_response(_out(request, namespace, activity))


@routes.delete("/v1/activities/{name}")
async def delete_activity(request: web.Request) -> web.Response:
    namespace = namespace_of(request)
    tasks = _tasks(request)
    name = _name(request)
    activity = await tasks.activity(namespace, name)
    await tasks.delete_activity(namespace, name)
    return json_response(_out(request, namespace, activity))


@routes.post("/v1/activities/{name}/poll")
async def poll_activity(request: web.Request) -> web.StreamResponse:
    query = decode_query(request.query, PollQuery)
    req = decode_body(await request.read(), PollActivity)
    deadline.extend(request, float(query.wait))  # waiting is what a long poll is for
    task = await _tasks(request).poll(
        namespace_of(request), _name(request), req.worker_name, float(query.wait)
    )
    if task is None:
        return web.Response(status=204)
    return json_response(
        ActivityTaskOut(
            task_token=task.task_token, input=task.input, idempotency_key=task.idempotency_key
        )
    )
