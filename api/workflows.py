"""Workflow routes: register (PUT), list, get.

PUT /v1/workflows/{name}  {"definition": {...}} -> 201 new version | 200 unchanged
GET /v1/workflows                               -> {"workflows": [latest of each]}
GET /v1/workflows/{name}[?version=N]            -> the latest (or that) version
POST /v1/workflows:validate {"definition": {...}} -> 200 {"valid", "errors": [{path, message}]}
"""

from __future__ import annotations

from aiohttp import web

from api.auth import namespace_of
from api.keys import COMMANDS, CONFIG
from api.params import workflow_name
from api.responses import json_response
from api.schemas import (
    RegisterWorkflow,
    ValidationIssue,
    ValidationResult,
    WorkflowList,
    WorkflowQuery,
    decode_body,
    decode_query,
    refuse_nul,
)
from api.views import workflow_out
from engine.errors import PayloadTooLarge

routes = web.RouteTableDef()


@routes.put("/v1/workflows/{name}")
async def register_workflow(request: web.Request) -> web.Response:
    name = workflow_name(request)
    body = await request.read()
    limit = request.app[CONFIG].max_definition_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"definition body is {len(body)} bytes; the limit is {limit}")
    req = decode_body(body, RegisterWorkflow)
    refuse_nul(req.definition, "$.definition")
    wf, created = await request.app[COMMANDS].register(
        namespace_of(request), name, req.definition, req.type
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
    limit = request.app[CONFIG].max_definition_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"definition body is {len(body)} bytes; the limit is {limit}")
    req = decode_body(body, RegisterWorkflow)
    errors = request.app[COMMANDS].validate(req.definition)
    issues = [ValidationIssue(path=p, message=m) for p, m in errors]
    return json_response(ValidationResult(valid=not issues, errors=issues))


@routes.get("/v1/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    versions = await request.app[COMMANDS].list_workflows(namespace_of(request))
    return json_response(WorkflowList(workflows=[workflow_out(wf) for wf in versions]))


@routes.get("/v1/workflows/{name}")
async def get_workflow(request: web.Request) -> web.Response:
    name = workflow_name(request)
    query = decode_query(request.query, WorkflowQuery)
    wf = await request.app[COMMANDS].describe_workflow(namespace_of(request), name, query.version)
    return json_response(workflow_out(wf))
