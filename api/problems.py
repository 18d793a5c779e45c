"""Errors as RFC 9457 problem+json, translated once, in `error_middleware`.

Every error response has this body (`errors` only when there are some):
    {"type": "urn:steplog:problem:<code>", "title": ..., "status": ..., "code": ...,
     "detail": ..., "instance": <request path>, "request_id": ...,
     "errors": [{"path": "$.States.A", "message": ...}]}

`code` is stable and machine-readable. Sources, in the order they are tried:
- `SteplogError` (engine/errors.py and the API's own below): its code/status;
  InvalidDefinition and InvalidBody carry `errors`. `Unavailable` (a PostgreSQL
  or Redis that does not answer, translated by the adapters) is 503
  `service_unavailable` with Retry-After and a fixed detail (the driver's
  error goes to the log only).
- aiohttp HTTP errors: 404 `route_not_found`, 405 `method_not_allowed` (with
  Allow), 413 `payload_too_large`, else `http_<status>`.
  A value the database refuses (engine.errors.InvalidData, translated by the
  store) is 400 `invalid_request`: the bounds in api/schemas.py are meant to stop
  all of these before SQL; this is the net.
- a connection failure no adapter translated (ConnectionError, TimeoutError): 503
  `service_unavailable` with Retry-After all the same, logged with its traceback.
- anything else: 500 `internal`, logged with its traceback and the request id.

Errors aiohttp answers itself, before any middleware (a malformed request line,
headers over their limits, bad chunked encoding), get the same body from
api/server.py, without echoing what the client sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from engine.errors import InvalidDefinition, InvalidRequest, SteplogError, Unavailable
from engine.logcontext import request_id_var

log = logging.getLogger("steplog.api")

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = "1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MalformedJson(InvalidRequest):
    """The body is not JSON at all."""

    code = "malformed_json"


class InvalidBody(InvalidRequest):
    """The body is JSON of the wrong shape; `errors` has the msgspec path."""

    code = "invalid_body"
    status = 422

    def __init__(self, message: str, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__(message)
        self.errors = list(errors)


class UnsupportedMediaType(SteplogError):
    """A request body that is not declared as JSON."""

    code = "unsupported_media_type"
    status = 415


class RequestTimeout(SteplogError):
    """The client did not send its whole body in time."""

    code = "request_timeout"
    status = 408


class IncompleteBody(SteplogError):
    """The client closed the connection before its whole body arrived."""

    code = "incomplete_body"
    status = 400


class InvalidQuery(InvalidRequest):
    """A query parameter of the wrong type or range (including a bad cursor)."""

    def __init__(self, message: str, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__(message)
        self.errors = list(errors)


TITLES = {
    "internal": "Internal server error",
    "not_found": "Not found",
    "workflow_not_found": "Workflow not found",
    "execution_not_found": "Execution not found",
    "key_not_found": "API key not found",
    "namespace_not_found": "Namespace not found",
    "unauthenticated": "Missing or invalid API key",
    "forbidden": "Not allowed for this key",
    "route_not_found": "No such route",
    "method_not_allowed": "Method not allowed",
    "not_acceptable": "Not acceptable",
    "concurrency_conflict": "Concurrent update",
    "execution_name_conflict": "Execution name already used with a different input",
    "execution_not_running": "Execution is not running",
    "invalid_definition": "Invalid state machine definition",
    "invalid_request": "Invalid request",
    "invalid_body": "Request body has the wrong shape",
    "malformed_json": "Request body is not valid JSON",
    "payload_too_large": "Payload too large",
    "service_unavailable": "Service unavailable",
    "unsupported_media_type": "Unsupported media type",
    "request_timeout": "Request timeout",
    "bad_http_request": "Malformed HTTP request",
    "headers_too_large": "Request headers too large",
    "uri_too_long": "Request line too long",
    "not_implemented": "Not implemented",
    "too_many_connections": "Too many connections",
    "invalid_token": "Invalid task token",
    "task_does_not_exist": "Task does not exist",
    "task_timed_out": "Task is no longer waiting for its token",
    "activity_not_found": "Activity not found",
    "webhook_limit_exceeded": "Too many webhook subscriptions in this namespace",
}

_HTTP_CODES = {404: "route_not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class ProblemIssue(msgspec.Struct):
    path: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details, as every error response carries them."""

    type: str
    title: str
    status: Annotated[int, Meta(ge=400, le=599)]
    code: str
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[ProblemIssue] = []
    # /health/ready only: the result of each check.
    checks: dict[str, str] | None = None


_encoder = msgspec.json.Encoder()


def problem(
    request: web.Request | None,
    status: int,
    code: str,
    detail: str,
    *,
    errors: Sequence[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
    checks: dict[str, str] | None = None,
) -> web.Response:
    """A problem+json response."""
    body = Problem(
        type=f"urn:steplog:problem:{code}",
        title=TITLES.get(code) or _phrase(status),
        status=status,
        code=code,
        detail=detail,
        instance=None if request is None else request.path,
        request_id=request_id_var.get() or None,
        errors=[ProblemIssue(path, message) for path, message in errors],
        checks=checks,
    )
    response = web.Response(body=_encoder.encode(body), status=status, headers=headers)
    response.content_type = PROBLEM_JSON
    return response


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def from_steplog_error(request: web.Request, exc: SteplogError) -> web.Response:
    errors: Sequence[tuple[str, str]] = ()
    if isinstance(exc, InvalidDefinition | InvalidBody | InvalidQuery):
        errors = exc.errors
    return problem(request, exc.status, exc.code, exc.message, errors=errors)


def from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    if exc.status == 404:
        detail = f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        detail = f"{request.method} is not allowed on {request.path}"
    elif exc.status == 413:
        detail = f"request body is larger than {request.client_max_size} bytes"
    else:
        detail = exc.reason
    return problem(request, exc.status, code, detail, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place exceptions become responses."""
    try:
        return await handler(request)
    except Unavailable as exc:
        # The client learns only that it may retry; the log has the driver's error.
        log.warning("dependency unavailable: %r", exc.__cause__ or exc)
        return problem(
            request,
            503,
            "service_unavailable",
            "a backing service (PostgreSQL or Redis) is unavailable; retry later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    except SteplogError as exc:
        if exc.status >= 500:
            log.error("request failed: %s", exc.code, exc_info=exc)
        return from_steplog_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(request, exc)
    except asyncio.CancelledError:
        raise
    except (ConnectionError, TimeoutError):
        # A connection failure no adapter translated (a gap to close: logged with its
        # traceback), yet an outage for the client all the same: never a 500.
        log.exception("untranslated connection failure in %s %s", request.method, request.path)
        return problem(
            request,
            503,
            "service_unavailable",
            "a backing service (PostgreSQL or Redis) is unavailable; retry later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(
            request,
            500,
            "internal",
            f"internal error; quote request id {request_id_var.get()} when reporting it",
        )
