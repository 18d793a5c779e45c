"""Workflow routes: register (PUT), list, get.

PUT /v1/workflows/{name}  {"definition": {...}} -> 201 new version | 200 unchanged
GET /v1/workflows                               -> {"workflows": [latest of each]}
GET /v1/workflows/{name}[?version=N]            -> the latest (or that) version
POST /v1/workflows:validate {"definition": {...}} -> 200 {"valid", "errors": [{path, message}]}
"""

from __future__ import annotations

from aiohttp import web

from api.keys import SERVICE, SETTINGS, STORE
from api.responses import json_response
from api.schemas import (
    WORKFLOW_NAME,
    RegisterWorkflow,
    ValidationIssue,
    ValidationResult,
    WorkflowList,
    WorkflowOut,
    WorkflowQuery,
    decode_body,
    decode_query,
    rfc3339,
)
from engine.adapters.store import WorkflowVersion
from engine.errors import InvalidRequest, PayloadTooLarge, WorkflowNotFound

routes = web.RouteTableDef()


def workflow_name(request: web.Request) -> str:
    """The {name} path segment, checked: 1-80 of [A-Za-z0-9_.-]."""
    name = request.match_info["name"]
    if not WORKFLOW_NAME.fullmatch(name):
        raise InvalidRequest(f"workflow name {name!r} must be 1-80 of A-Z a-z 0-9 _ . -")
    return name


def workflow_out(wf: WorkflowVersion) -> WorkflowOut:
    return WorkflowOut(
        name=wf.name,
        version=wf.version,
        definition=wf.definition,
        created_at=rfc3339(wf.created_at),
    )


@routes.put("/v1/workflows/{name}")
async def register_workflow(request: web.Request) -> web.Response:
    name = workflow_name(request)
    body = await request.read()
    limit = request.app[SETTINGS].max_payload_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"definition body is {len(body)} bytes; the limit is {limit}")
    req = decode_body(body, RegisterWorkflow)
    wf, created = await request.app[SERVICE].register(
        request.app[SETTINGS].namespace, name, req.definition
    )
    location = f"/v1/workflows/{wf.name}?version={wf.version}"
    return json_response(
        workflow_out(wf), status=201 if created else 200, headers={"Location": location}
    )


@routes.post("/v1/workflows:validate")
async def validate_workflow(request: web.Request) -> web.Response:
    """Validate without registering (like Step Functions' ValidateStateMachineDefinition):
    a definition that does not validate is a successful answer, not a 4xx."""
    body = await request.read()
    limit = request.app[SETTINGS].max_payload_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"definition body is {len(body)} bytes; the limit is {limit}")
    req = decode_body(body, RegisterWorkflow)
    errors = request.app[SERVICE].validate(req.definition)
    issues = [ValidationIssue(path=p, message=m) for p, m in errors]
    return json_response(ValidationResult(valid=not issues, errors=issues))


@routes.get("/v1/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    versions = await request.app[STORE].list_workflows(request.app[SETTINGS].namespace)
    return json_response(WorkflowList(workflows=[workflow_out(wf) for wf in versions]))


@routes.get("/v1/workflows/{name}")
async def get_workflow(request: web.Request) -> web.Response:
    name = workflow_name(request)
    query = decode_query(request.query, WorkflowQuery)
    wf = await request.app[STORE].get_workflow(request.app[SETTINGS].namespace, name, query.version)
    if wf is None:
        what = name if query.version is None else f"{name} version {query.version}"
        raise WorkflowNotFound(f"no workflow {what}")
    return json_response(workflow_out(wf))
