"""Task callback routes (Step Functions' SendTaskSuccess / SendTaskFailure /
SendTaskHeartbeat) for tasks waiting for their token: `.waitForTaskToken` resources and
activities (engine/tasks.py).

POST /v1/tasks/success   {"taskToken", "output": <any JSON>}          -> 200 {}
POST /v1/tasks/failure   {"taskToken", "error"?, "cause"?}            -> 200 {}
POST /v1/tasks/heartbeat {"taskToken"}                                -> 200 {}

A 200 means the outcome (TaskSucceeded / TaskFailed / TaskHeartbeatRecorded) is
committed. Problems: 400 `invalid_token` (malformed, not issued by steplog, or of
another namespace), 404 `task_does_not_exist`, 409 `task_timed_out` (the attempt no
longer waits: timed out, reported already, retried, or its execution ended), 413 an
output over max_payload_bytes.
"""

from __future__ import annotations

from aiohttp import web

from api.auth import namespace_of
from api.keys import CONFIG, TASKS
from api.responses import json_response
from api.schemas import decode_body, decode_input
from api.task_schemas import SendTaskFailure, SendTaskHeartbeat, SendTaskSuccess, TaskReported
from engine.errors import PayloadTooLarge, Unavailable
from engine.tasks import Tasks

routes = web.RouteTableDef()


def tasks_of(request: web.Request) -> Tasks:
    tasks = request.app.get(TASKS)
    if tasks is None:
        raise Unavailable("task callbacks are not served by this application")
    return tasks


@routes.post("/v1/tasks/success")
async def send_task_success(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), SendTaskSuccess)
    limit = request.app[CONFIG].max_payload_bytes
    if len(req.output) > limit:
        raise PayloadTooLarge(f"output is {len(req.output)} bytes; the limit is {limit}")
    output = decode_input(bytes(req.output))
    await tasks_of(request).succeed(namespace_of(request), req.task_token, output)
    return json_response(TaskReported())


@routes.post("/v1/tasks/failure")
async def send_task_failure(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), SendTaskFailure)
    await tasks_of(request).fail(namespace_of(request), req.task_token, req.error, req.cause)
    return json_response(TaskReported())


@routes.post("/v1/tasks/heartbeat")
async def send_task_heartbeat(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), SendTaskHeartbeat)
    await tasks_of(request).heartbeat(namespace_of(request), req.task_token)
    return json_response(TaskReported())
