"""The API contract: an OpenAPI 3.1 document generated from the msgspec types the
handlers decode and encode (api/schemas.py, api/problems.py), never written by hand.

GET /v1/openapi.json -> the document (application/json)
GET /docs            -> the same, as a readable HTML page (no script, no outside asset)

`OPERATIONS` lists every route once: its query struct (each field becomes a query
parameter with the field's schema, bounds included), body struct, responses and
the problem statuses it can answer. Schemas come from
`msgspec.json.schema_components`, so a bound changed in api/schemas.py is the
bound published. tests/api/test_openapi.py checks that every route of the app is
here and the reverse; tests/api/test_fuzz.py runs schemathesis against it.
"""

from __future__ import annotations

import html
from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from api.access_schemas import (
    AuditList,
    AuditQuery,
    CreatedKey,
    CreateKey,
    CreateNamespace,
    KeyList,
    KeyOut,
    NamespaceList,
    NamespaceOut,
)
from api.auth import NAMESPACE_HEADER, PUBLIC_PATHS, required_role
from api.problems import TITLES, Problem
from api.schemas import (
    DB_INT_MAX,
    DiffQuery,
    EventsFeedQuery,
    ExecutionList,
    ExecutionOut,
    ExportQuery,
    Health,
    History,
    HistoryQuery,
    ListExecutionsQuery,
    RegisterWorkflow,
    StartExecution,
    StateDiff,
    StateQuery,
    StatsQuery,
    StopExecution,
    ValidationResult,
    WorkflowList,
    WorkflowName,
    WorkflowOut,
    WorkflowQuery,
    WorkflowStats,
)
from api.task_schemas import (
    ActivityList,
    ActivityListQuery,
    ActivityOut,
    ActivityTaskOut,
    CreateActivity,
    PollActivity,
    PollQuery,
    SendTaskFailure,
    SendTaskHeartbeat,
    SendTaskSuccess,
    TaskReported,
)
from api.webhook_schemas import (
    CreatedWebhook,
    CreateWebhook,
    DeliveriesQuery,
    DeliveryList,
    DeliveryOut,
    RotatedSecret,
    RotateSecret,
    UpdateWebhook,
    WebhookList,
    WebhookOut,
)
from engine.core.state import ExecutionState

routes = web.RouteTableDef()

PROBLEM = "application/problem+json"
JSON = "application/json"
REF = "#/components/schemas/{name}"


class Op(msgspec.Struct, frozen=True, kw_only=True):
    """One operation. ``ok``: 2xx status -> response type (a Struct), or a media type
    string for a non-JSON body. ``problems``: the error statuses it can answer."""

    method: str
    path: str
    id: str
    summary: str
    tag: str
    query: type | None = None
    body: type | None = None
    ok: dict[int, Any]
    problems: tuple[int, ...] = ()
    headers: tuple[tuple[str, dict[str, Any], str], ...] = ()
    links: dict[int, dict[str, Any]] = {}


# Statuses any /v1 route can answer besides its own: an unavailable backing service.
_V1 = (503,)
# Any route with a JSON body: not JSON (415), too big (413), too slow (408).
_BODY = (400, 408, 413, 415, 422)
_EXEC_LINKS = {
    "GetExecution": {"operationId": "getExecution"},
    "GetHistory": {"operationId": "getHistory"},
    "GetState": {"operationId": "getState"},
    "GetStateDiff": {"operationId": "getStateDiff"},
    "StopExecution": {"operationId": "stopExecution"},
    "ExportHistory": {"operationId": "exportHistory"},
}
_BY_EXECUTION_ID = {"id": "$response.body#/execution_id"}

OPERATIONS: tuple[Op, ...] = (
    Op(
        method="put",
        path="/v1/workflows/{name}",
        id="registerWorkflow",
        summary="Register a workflow: 201 with a new version, 200 when the definition is unchanged",
        tag="workflows",
        body=RegisterWorkflow,
        ok={200: WorkflowOut, 201: WorkflowOut},
        problems=(*_BODY, *_V1),
        links={
            201: {
                "StartExecution": {
                    "operationId": "startExecution",
                    "parameters": {"name": "$response.body#/name"},
                },
                "GetWorkflow": {
                    "operationId": "getWorkflow",
                    "parameters": {"name": "$response.body#/name"},
                },
            }
        },
    ),
    Op(
        method="post",
        path="/v1/workflows:validate",
        id="validateWorkflow",
        summary="Validate a definition without registering it (an invalid one is a 200)",
        tag="workflows",
        body=RegisterWorkflow,
        ok={200: ValidationResult},
        problems=_BODY,
    ),
    Op(
        method="get",
        path="/v1/workflows",
        id="listWorkflows",
        summary="The latest version of every workflow",
        tag="workflows",
        ok={200: WorkflowList},
        problems=_V1,
    ),
    Op(
        method="get",
        path="/v1/workflows/{name}",
        id="getWorkflow",
        summary="The latest (or the given) version of a workflow",
        tag="workflows",
        query=WorkflowQuery,
        ok={200: WorkflowOut},
        problems=(400, 404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/workflows/{name}/stats",
        id="getWorkflowStats",
        summary="Execution and state statistics over [from, to) (default: the last 24 hours)",
        tag="workflows",
        query=StatsQuery,
        ok={200: WorkflowStats},
        problems=(400, 404, *_V1),
    ),
    Op(
        method="post",
        path="/v1/workflows/{name}/executions",
        id="startExecution",
        summary="Start an execution: 201 once ExecutionStarted is committed (with the first "
        "states that do not wait, so the status may already be an end), 200 for the same "
        "name and input again, 409 for the same name with another input",
        tag="executions",
        body=StartExecution,
        ok={200: ExecutionOut, 201: ExecutionOut},
        problems=(*_BODY, 404, 409, *_V1),
        links={
            201: {
                name: {**link, "parameters": _BY_EXECUTION_ID} for name, link in _EXEC_LINKS.items()
            }
        },
    ),
    Op(
        method="get",
        path="/v1/executions",
        id="listExecutions",
        summary="Executions, newest first (or oldest with order=asc), filtered, in pages",
        tag="executions",
        query=ListExecutionsQuery,
        ok={200: ExecutionList},
        problems=(400, *_V1),
    ),
    Op(
        method="get",
        path="/v1/executions/{id}",
        id="getExecution",
        summary="One execution",
        tag="executions",
        ok={200: ExecutionOut},
        problems=(404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/executions/{id}/history",
        id="getHistory",
        summary="Pages of an execution's events by seq",
        tag="executions",
        query=HistoryQuery,
        ok={200: History},
        problems=(400, 404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/executions/{id}/history.jsonl",
        id="exportHistory",
        summary="The whole history as JSON Lines",
        tag="executions",
        query=ExportQuery,
        ok={200: "application/x-ndjson"},
        problems=(400, 404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/executions/{id}/events",
        id="getEventFeed",
        summary="The live feed of an execution's events (Server-Sent Events): what happened, "
        "then each new event, until the terminal one",
        tag="executions",
        query=EventsFeedQuery,
        headers=(
            (
                "Last-Event-ID",
                {"type": "string", "pattern": "^[0-9]{1,10}$"},
                f"resume after this seq (0..{DB_INT_MAX}); wins over ?after=",
            ),
        ),
        ok={200: "text/event-stream"},
        problems=(400, 404, 406, *_V1),
    ),
    Op(
        method="post",
        path="/v1/executions/{id}/stop",
        id="stopExecution",
        summary="Stop a running execution (ExecutionAborted with the given error and cause)",
        tag="executions",
        body=StopExecution,
        ok={200: ExecutionOut},
        problems=(*_BODY, 404, 409, *_V1),
    ),
    Op(
        method="get",
        path="/v1/executions/{id}/state",
        id="getState",
        summary="The state replayed from the events up to seq (all when absent)",
        tag="executions",
        query=StateQuery,
        ok={200: ExecutionState},
        problems=(400, 404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/executions/{id}/state/diff",
        id="getStateDiff",
        summary="The events in (from, to] and the RFC 6902 ops between the two states",
        tag="executions",
        query=DiffQuery,
        ok={200: StateDiff},
        problems=(400, 404, *_V1),
    ),
    Op(
        method="post",
        path="/v1/namespaces",
        id="createNamespace",
        summary="Create a namespace (global admin keys): 201, or 200 when it exists",
        tag="access",
        body=CreateNamespace,
        ok={200: NamespaceOut, 201: NamespaceOut},
        problems=(*_BODY, *_V1),
    ),
    Op(
        method="get",
        path="/v1/namespaces",
        id="listNamespaces",
        summary="The namespaces (a namespace's admin sees its own)",
        tag="access",
        ok={200: NamespaceList},
        problems=_V1,
    ),
    Op(
        method="post",
        path="/v1/keys",
        id="createKey",
        summary="Create an API key: the whole key is in this response only",
        tag="access",
        body=CreateKey,
        ok={201: CreatedKey},
        problems=(*_BODY, 404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/keys",
        id="listKeys",
        summary="The keys of the caller's namespace (all for a global admin), without secrets",
        tag="access",
        ok={200: KeyList},
        problems=_V1,
    ),
    Op(
        method="post",
        path="/v1/keys/{key_id}/revoke",
        id="revokeKey",
        summary="Revoke a key: it is refused from then on",
        tag="access",
        ok={200: KeyOut},
        problems=(404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/audit",
        id="listAudit",
        summary="The audit trail of administrative actions, newest first, in pages",
        tag="access",
        query=AuditQuery,
        ok={200: AuditList},
        problems=(400, *_V1),
    ),
    Op(
        method="post",
        path="/v1/tasks/success",
        id="sendTaskSuccess",
        summary="Report a task waiting for its token as succeeded with this output "
        "(200 once TaskSucceeded is committed)",
        tag="tasks",
        body=SendTaskSuccess,
        ok={200: TaskReported},
        problems=(*_BODY, 404, 409, *_V1),
    ),
    Op(
        method="post",
        path="/v1/tasks/failure",
        id="sendTaskFailure",
        summary="Report a task waiting for its token as failed with this error and cause",
        tag="tasks",
        body=SendTaskFailure,
        ok={200: TaskReported},
        problems=(*_BODY, 404, 409, *_V1),
    ),
    Op(
        method="post",
        path="/v1/tasks/heartbeat",
        id="sendTaskHeartbeat",
        summary="Report a task waiting for its token as alive (its HeartbeatSeconds restart)",
        tag="tasks",
        body=SendTaskHeartbeat,
        ok={200: TaskReported},
        problems=(*_BODY, 404, 409, *_V1),
    ),
    Op(
        method="post",
        path="/v1/activities",
        id="createActivity",
        summary="Create an activity: 201, or 200 when it exists",
        tag="activities",
        body=CreateActivity,
        ok={200: ActivityOut, 201: ActivityOut},
        problems=(*_BODY, *_V1),
    ),
    Op(
        method="get",
        path="/v1/activities",
        id="listActivities",
        summary="The activities, by name, in pages",
        tag="activities",
        query=ActivityListQuery,
        ok={200: ActivityList},
        problems=(400, *_V1),
    ),
    Op(
        method="get",
        path="/v1/activities/{name}",
        id="getActivity",
        summary="One activity",
        tag="activities",
        ok={200: ActivityOut},
        problems=(404, *_V1),
    ),
    Op(
        method="post",
        path="/v1/activities/{name}/poll",
        id="pollActivity",
        summary="Take the next task of an activity, waiting up to `wait` seconds: 200 with "
        "its token and input, 204 when none came",
        tag="activities",
        query=PollQuery,
        body=PollActivity,
        ok={200: ActivityTaskOut, 204: None},
        problems=(*_BODY, 404, *_V1),
    ),
    Op(
        method="delete",
        path="/v1/activities/{name}",
        id="deleteActivity",
        summary="Delete an activity (its tasks already scheduled stay queued)",
        tag="activities",
        ok={200: ActivityOut},
        problems=(404, *_V1),
    ),
    Op(
        method="post",
        path="/v1/webhooks",
        id="createWebhook",
        summary="Subscribe a URL to the namespace's events: the signing secret is in this "
        "response only",
        tag="webhooks",
        body=CreateWebhook,
        ok={201: CreatedWebhook},
        problems=(*_BODY, 409, *_V1),
        links={
            201: {
                "GetWebhook": {
                    "operationId": "getWebhook",
                    "parameters": {"webhook_id": "$response.body#/webhook/webhook_id"},
                },
                "ListDeliveries": {
                    "operationId": "listDeliveries",
                    "parameters": {"webhook_id": "$response.body#/webhook/webhook_id"},
                },
                "RotateWebhookSecret": {
                    "operationId": "rotateWebhookSecret",
                    "parameters": {"webhook_id": "$response.body#/webhook/webhook_id"},
                },
            }
        },
    ),
    Op(
        method="get",
        path="/v1/webhooks",
        id="listWebhooks",
        summary="The namespace's webhook subscriptions (without secrets)",
        tag="webhooks",
        ok={200: WebhookList},
        problems=_V1,
    ),
    Op(
        method="get",
        path="/v1/webhooks/{webhook_id}",
        id="getWebhook",
        summary="One webhook subscription",
        tag="webhooks",
        ok={200: WebhookOut},
        problems=(404, *_V1),
    ),
    Op(
        method="patch",
        path="/v1/webhooks/{webhook_id}",
        id="updateWebhook",
        summary="Change a subscription; enabled false pauses it, true resumes it",
        tag="webhooks",
        body=UpdateWebhook,
        ok={200: WebhookOut},
        problems=(*_BODY, 404, *_V1),
    ),
    Op(
        method="delete",
        path="/v1/webhooks/{webhook_id}",
        id="deleteWebhook",
        summary="Delete a subscription and its deliveries",
        tag="webhooks",
        ok={204: None},
        problems=(404, *_V1),
    ),
    Op(
        method="post",
        path="/v1/webhooks/{webhook_id}/rotate-secret",
        id="rotateWebhookSecret",
        summary="Replace the signing secret (given or generated; in this response only); the "
        "replaced one signs alongside until webhook.previous_secret_until",
        tag="webhooks",
        body=RotateSecret,
        ok={200: RotatedSecret},
        problems=(*_BODY, 404, *_V1),
    ),
    Op(
        method="get",
        path="/v1/webhooks/{webhook_id}/deliveries",
        id="listDeliveries",
        summary="A subscription's deliveries, newest first, each with its attempts",
        tag="webhooks",
        query=DeliveriesQuery,
        ok={200: DeliveryList},
        problems=(400, 404, *_V1),
    ),
    Op(
        method="post",
        path="/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay",
        id="replayDelivery",
        summary="Send a delivery again now, with the same webhook-id and body",
        tag="webhooks",
        ok={200: DeliveryOut},
        problems=(404, *_V1),
    ),
    Op(
        method="get",
        path="/health/live",
        id="live",
        summary="200 while the process serves HTTP",
        tag="operations",
        ok={200: Health},
    ),
    Op(
        method="get",
        path="/health/ready",
        id="ready",
        summary="200 when PostgreSQL and Redis answer and this process's role loops are healthy, "
        "else 503 with the checks",
        tag="operations",
        ok={200: Health},
        problems=(503,),
    ),
    Op(
        method="get",
        path="/metrics",
        id="metrics",
        summary="Prometheus metrics",
        tag="operations",
        ok={200: "text/plain"},
    ),
    Op(
        method="get",
        path="/v1/openapi.json",
        id="openapi",
        summary="This document",
        tag="operations",
        ok={200: JSON},
    ),
    Op(
        method="get",
        path="/docs",
        id="docs",
        summary="This document as a readable page",
        tag="operations",
        ok={200: "text/html"},
    ),
)

SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "slk_<key id>_<secret>",
        "description": "An API key (steplog keys create, POST /v1/keys): "
        "Authorization: Bearer slk_<key id>_<secret>. Its role says what it may do: "
        "reader (GET routes), operator (also register, start, stop), admin (also keys, "
        "namespaces, the audit trail, webhooks).",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "STEPLOG_METRICS_TOKEN, for /metrics only.",
    },
}
_NAMESPACE_PARAM: dict[str, Any] = {
    "name": NAMESPACE_HEADER,
    "in": "header",
    "required": False,
    "description": "for a global admin key: the namespace to work in (default: the "
    "server's STEPLOG_NAMESPACE); a key bound to a namespace may name only its own (403)",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]*$",
    },
}


def _auth_statuses(op: Op) -> tuple[int, ...]:
    """401 without a valid key, 403 for a role (or namespace) that may not call it, 404
    for a Steplog-Namespace (of a global admin key) that does not exist."""
    if op.path in PUBLIC_PATHS:
        return ()
    if op.path == "/metrics":
        return (401, 403)
    return (401, 403, 404)


_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "name": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "workflow (or activity) name: 1-80 of A-Z a-z 0-9 _ . -",
        "schema": msgspec.json.schema(WorkflowName),
    },
    "key_id": {
        "name": "key_id",
        "in": "path",
        "required": True,
        "description": "an API key's id (16 hex digits; anything else is answered 404)",
        "schema": {"type": "string"},
    },
    "webhook_id": {
        "name": "webhook_id",
        "in": "path",
        "required": True,
        "description": "a webhook subscription's id (a malformed one is answered 404)",
        "schema": {"type": "string", "format": "uuid"},
    },
    "delivery_id": {
        "name": "delivery_id",
        "in": "path",
        "required": True,
        "description": "a delivery's id (the webhook-id header it was sent with)",
        "schema": {"type": "string"},
    },
    "id": {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "execution id (a malformed one is answered like an unknown one: 404)",
        "schema": {"type": "string", "format": "uuid"},
    },
}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value, never JSON null."""
    if "default" in schema and schema["default"] is None:
        schema = {k: v for k, v in schema.items() if k != "default"}
    alternatives = schema.get("anyOf")
    if alternatives:
        rest = [a for a in alternatives if a != {"type": "null"}]
        if len(rest) == 1:
            extra = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**rest[0], **extra}
    return schema


def _query_parameters(kind: type) -> list[dict[str, Any]]:
    schema = msgspec.json.schema(kind)
    struct = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    required = set(struct.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _without_null(prop),
        }
        for name, prop in struct["properties"].items()
    ]


def _json_content(schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {media: {"schema": schema}}


def _ok_content(value: Any, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    if isinstance(value, str):
        schema: dict[str, Any] = {"type": "object"} if value == JSON else {"type": "string"}
        return {value: {"schema": schema}}
    return _json_content(refs[value])


# Rate limits (api/ratelimit.py): every /v1 operation but this document.
_RATE_HEADERS = {
    "RateLimit-Limit": "size of the tightest token bucket the request took from",
    "RateLimit-Remaining": "whole tokens left in that bucket",
    "RateLimit-Reset": "seconds until that bucket is full again",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def rate_limited(op: Op) -> bool:
    """Whether the rate limits apply to ``op`` (all of /v1 but the OpenAPI document)."""
    return op.path.startswith("/v1/") and op.path != "/v1/openapi.json"


def _limited_responses(responses: dict[str, Any]) -> None:
    """RateLimit-* on every response (absent while Redis is away: reads then pass
    unlimited), Retry-After on 429 and 503."""
    rate_headers = {
        name: {"description": text, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
        for name, text in _RATE_HEADERS.items()
    }
    for status, response in responses.items():
        headers = dict(rate_headers)
        if status in ("429", "503"):
            headers.update(_RETRY_AFTER)
        response["headers"] = headers


def _operation(op: Op, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    params = [_PATH_PARAMS[p] for p in _PATH_PARAMS if "{" + p + "}" in op.path]
    if op.query is not None:
        params.extend(_query_parameters(op.query))
    params.extend(
        {"name": name, "in": "header", "required": False, "schema": schema, "description": text}
        for name, schema, text in op.headers
    )
    responses: dict[str, Any] = {}
    for status, value in op.ok.items():
        responses[str(status)] = {"description": "success"}
        if value is not None:  # 204: no body
            responses[str(status)]["content"] = _ok_content(value, refs)
        if status in op.links:
            responses[str(status)]["links"] = op.links[status]
    problems = {*op.problems, 405, *_auth_statuses(op)}
    if rate_limited(op):
        # 429: over a rate limit (or a start over the RUNNING quota); 503: a write while
        # Redis is away (the limiter fails closed for writes).
        problems |= {429} if op.method == "get" else {429, 503}
    for status in sorted(problems):
        responses[str(status)] = {
            "description": "a problem (RFC 9457); `code` says which",
            "content": _json_content(refs[Problem], PROBLEM),
        }
    if op.path not in PUBLIC_PATHS and op.path != "/metrics":
        params.append(_NAMESPACE_PARAM)
    if rate_limited(op):
        _limited_responses(responses)
    out: dict[str, Any] = {
        "operationId": op.id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": params,
        "responses": responses,
    }
    if op.path in PUBLIC_PATHS:
        out["security"] = []
    elif op.path == "/metrics":
        out["security"] = [{"metricsToken": []}, {}]
        out["description"] = (
            "With STEPLOG_METRICS_TOKEN set, send it as a bearer token; without one, "
            "/metrics is served to loopback clients only (403 for others)."
        )
    else:
        role = required_role(op.method.upper(), op.path)
        out["description"] = f"Needs an API key with the {role.name.lower()} role or above."
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body is RegisterWorkflow,
            "content": _json_content(refs[op.body]),
        }
    return out


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process)."""
    types: list[Any] = []
    for op in OPERATIONS:
        if op.body is not None:
            types.append(op.body)
        types.extend(v for v in op.ok.values() if v is not None and not isinstance(v, str))
    types.append(Problem)
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template=REF)
    refs = dict(zip(unique, schemas, strict=True))
    problem_codes = ", ".join(
        f"`{c}`" for c in sorted({*TITLES, "rate_limited", "running_quota_exceeded"})
    )
    components["Problem"]["description"] = (
        "An error, as problem+json (RFC 9457). `code` is stable and machine-readable: "
        f"{problem_codes}; errors of HTTP itself use `http_<status>`, `line_too_long`, "
        "`bad_http_request`, `too_many_connections`."
    )
    _absent_times_as_null(components)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "steplog",
            "version": "1",
            "description": "Event-sourced workflow engine running Amazon States Language "
            "state machines. Every error is problem+json with a stable `code`. seq and "
            f"version are 1..{DB_INT_MAX} (PostgreSQL integer).",
        },
        "tags": [
            {"name": "workflows"},
            {"name": "executions"},
            {"name": "access"},
            {"name": "tasks"},
            {"name": "activities"},
            {"name": "webhooks"},
            {"name": "operations"},
        ],
        "paths": paths,
        "security": [{"apiKey": []}],
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


# The state is rendered with null where a time is not known yet, though the core's
# ExecutionState holds "" there (projections.queries.state_document): the schema says
# what is served.
_NULLABLE_TIMES = {"ExecutionState": ("started_at", "stopped_at"), "Frame": ("entered_time",)}


def _absent_times_as_null(components: dict[str, Any]) -> None:
    for name, fields in _NULLABLE_TIMES.items():
        properties = components[name]["properties"]
        for field in fields:
            properties[field] = {"anyOf": [{"type": "string"}, {"type": "null"}]}


@routes.get("/v1/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_encoded(), content_type=JSON)


@cache
def _encoded() -> bytes:
    return msgspec.json.encode(document())


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    return web.Response(
        text=_page(),
        content_type="text/html",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[1]
    return msgspec.json.encode(schema).decode()


@cache
def _page() -> str:
    doc = document()
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>steplog API</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
        "code,pre{background:#f4f4f4}td,th{border-bottom:1px solid #ddd;padding:.2em .5em;"
        "text-align:left;vertical-align:top}h3{margin-top:2em}</style></head><body>",
        f"<h1>steplog API</h1><p>{e(doc['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/v1/openapi.json'>/v1/openapi.json</a>.</p>",
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out.append(
                f"<h3 id='{e(op['operationId'])}'><code>{e(method.upper())} {e(path)}</code></h3>"
            )
            out.append(f"<p>{e(op['summary'])}</p>")
            if op["parameters"]:
                out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th></tr>")
                for p in op["parameters"]:
                    req = " (required)" if p["required"] else ""
                    out.append(
                        f"<tr><td><code>{e(p['name'])}</code>{req}</td><td>{e(p['in'])}</td>"
                        f"<td><code>{e(_schema_text(p['schema']))}</code></td></tr>"
                    )
                out.append("</table>")
            if "requestBody" in op:
                schema = op["requestBody"]["content"][JSON]["schema"]
                out.append(f"<p>Body: <code>{e(_schema_text(schema))}</code></p>")
            statuses = ", ".join(
                f"{s} {_schema_text(next(iter(r['content'].values()))['schema'])}"
                if "content" in r
                else f"{s} (no body)"
                for s, r in op["responses"].items()
            )
            out.append(f"<p>Responses: {e(statuses)}</p>")
    out.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        text = msgspec.json.format(msgspec.json.encode(schema)).decode()
        out.append(f"<h3 id='schema-{e(name)}'>{e(name)}</h3><pre>{e(text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out)
