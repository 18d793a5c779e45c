"""HTTP tasks: the built-in resource ``arn:aws:states:::http:invoke`` (as Step Functions'
HTTP Task), run by the worker through the outbound guard (engine/adapters/outbound.py).

The task's input (its Parameters, evaluated) describes the request:
    ApiEndpoint      the URL (http or https; required)
    Method           GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS (required)
    Headers          {name: value}; Host, Content-Length, Connection and Transfer-Encoding
                     are refused
    QueryParameters  {name: value or [values]}, added to the URL's own query
    RequestBody      a string is sent as it is (text/plain unless Headers say otherwise),
                     any other JSON value as JSON (application/json); with
                     Transform.RequestBodyEncoding "URL_ENCODED" an object is sent as a
                     form (application/x-www-form-urlencoded)
    Authentication   {"ConnectionArn": NAME or ...:connection/NAME/...}: a named connection
                     of the setting STEPLOG_HTTP_CONNECTIONS, whose headers, query
                     parameters and Basic credentials are added to the request (and win
                     over the definition's), so no secret is written in a definition.

The result, as AWS's: {"StatusCode": 200, "StatusText": "OK", "Headers": {name: [values]},
"ResponseBody": the body parsed as JSON when the response says it is JSON, else its text}.

Failures (error names a Retry or Catch can match):
    States.Http.StatusCode.NNN     a response that is not 2xx (redirects are not followed:
                                   a 3xx is one too); the cause is the result above as
                                   JSON, its body cut to BODY_IN_CAUSE characters
    States.Http.Socket             no response: connection refused or reset, DNS, TLS,
                                   or no complete response within the outbound timeout
    Steplog.Http.Refused           the outbound guard refused the address (loopback,
                                   private, link-local, metadata, ... unless allowed)
    Steplog.Http.ResponseTooLarge  a body past STEPLOG_OUTBOUND_MAX_RESPONSE_BYTES
    Steplog.Http.InvalidRequest    Parameters that do not describe a request, or an
                                   unknown connection
With tracing on, the request carries a ``traceparent`` header naming a span of the
task attempt (unless the Headers set one), so the endpoint can join the execution's
trace. The request is sent at least once per attempt (a worker that dies after sending it
sends it again): an endpoint with side effects should deduplicate, e.g. on a header
carrying ``$$.Execution.Id`` and ``$$.State.RetryCount`` set in the Parameters.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec

from engine.adapters.outbound import (
    Outbound,
    OutboundConnectionFailed,
    OutboundRefused,
    OutboundTimeout,
    OutboundTooLarge,
)
from engine.core.asl.validate.fields import HTTP_INVOKE as HTTP_INVOKE
from engine.core.asl.validate.fields import HTTP_METHODS
from engine.loops.worker import HandlerRegistry, TaskContext, TaskFailure
from engine.tracecontext import traceparent_of

METHODS = HTTP_METHODS
REFUSED_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})
BODY_IN_CAUSE = 4096
MAX_CAUSE = 32768

INVALID = "Steplog.Http.InvalidRequest"
SOCKET = "States.Http.Socket"
REFUSED = "Steplog.Http.Refused"
TOO_LARGE = "Steplog.Http.ResponseTooLarge"


class Connection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="pascal"):
    """A named connection of STEPLOG_HTTP_CONNECTIONS (AWS's EventBridge connection, in
    the settings instead): what it adds to every request that names it."""

    headers: dict[str, str] = {}
    query_parameters: dict[str, str] = {}
    basic: dict[str, str] | None = None  # {"Username": ..., "Password": ...}

    def __post_init__(self) -> None:
        if self.basic is not None and set(self.basic) != {"Username", "Password"}:
            raise ValueError("Basic needs exactly Username and Password")
        bad = [h for h in self.headers if h.lower() in REFUSED_HEADERS]
        if bad:
            raise ValueError(f"headers not allowed: {bad}")


def parse_connections(text: str) -> dict[str, Connection]:
    """STEPLOG_HTTP_CONNECTIONS: a JSON object {name: {"Headers": {...},
    "QueryParameters": {...}, "Basic": {"Username": ..., "Password": ...}}}; "" is none.
    ValueError (never quoting a value, which may be a secret) when malformed."""
    if not text.strip():
        return {}
    try:
        return msgspec.json.decode(text, type=dict[str, Connection])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # msgspec's messages name the path, not the value.
        raise ValueError(f"STEPLOG_HTTP_CONNECTIONS: {exc}") from None


def connection_name(reference: str) -> str:
    """The connection a ConnectionArn names: the name itself, or the NAME of an
    EventBridge ARN ``arn:aws:events:REGION:ACCOUNT:connection/NAME/ID``."""
    _, found, rest = reference.partition(":connection/")
    return rest.split("/", 1)[0] if found else reference


class HttpInvoke:
    """The handler of HTTP_INVOKE (see the module docstring)."""

    def __init__(self, outbound: Outbound, connections: Mapping[str, Connection]) -> None:
        self.outbound = outbound
        self.connections = dict(connections)

    async def __call__(self, value: Any, ctx: TaskContext) -> Any:
        method, url, headers, body = self.request_of(value)
        if ctx.tracer is not None and not any(k.lower() == "traceparent" for k, _ in headers):
            # The endpoint may continue the execution's trace (W3C Trace Context).
            with ctx.span("steplog.http", {"http.request.method": method}) as span:
                traceparent = traceparent_of(span)
                if traceparent:
                    headers.append(("traceparent", traceparent))
                return await self._send(method, url, headers, body)
        return await self._send(method, url, headers, body)

    async def _send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Any:
        try:
            response = await self.outbound.request(method, url, headers=headers, body=body)
        except OutboundRefused as exc:
            raise TaskFailure(REFUSED, exc.message) from None
        except OutboundTimeout as exc:
            raise TaskFailure(SOCKET, exc.message) from None
        except OutboundConnectionFailed as exc:
            raise TaskFailure(SOCKET, exc.message) from None
        except OutboundTooLarge as exc:
            raise TaskFailure(TOO_LARGE, exc.message) from None
        result = result_of(response.status, response.headers, response.body)
        if not 200 <= response.status < 300:
            raise TaskFailure(f"States.Http.StatusCode.{response.status}", cause_of(result))
        return result

    def request_of(self, value: Any) -> tuple[str, str, list[tuple[str, str]], bytes | None]:
        """(method, url, headers, body) from the task's Parameters; TaskFailure INVALID."""
        if not isinstance(value, dict):
            raise TaskFailure(INVALID, "the Parameters of an HTTP task must be an object")
        method = value.get("Method")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise TaskFailure(INVALID, f"Method must be one of {', '.join(sorted(METHODS))}")
        endpoint = value.get("ApiEndpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise TaskFailure(INVALID, "ApiEndpoint must be a URL")
        headers = _string_map(value.get("Headers"), "Headers")
        refused = [h for h in headers if h.lower() in REFUSED_HEADERS]
        if refused:
            raise TaskFailure(INVALID, f"Headers may not set {', '.join(refused)}")
        query = _query_pairs(value.get("QueryParameters"))
        connection = self._connection(value.get("Authentication"))
        if connection is not None:
            headers = {k: v for k, v in headers.items() if k.lower() not in _lower(connection)}
            headers.update(connection.headers)
            if connection.basic is not None:
                pair = f"{connection.basic['Username']}:{connection.basic['Password']}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            query += list(connection.query_parameters.items())
        body = self._body(value, headers)
        return method.upper(), _with_query(endpoint, query), list(headers.items()), body

    def _connection(self, authentication: Any) -> Connection | None:
        if authentication is None:
            return None
        arn = authentication.get("ConnectionArn") if isinstance(authentication, dict) else None
        if not isinstance(arn, str):
            raise TaskFailure(INVALID, 'Authentication must be {"ConnectionArn": NAME}')
        name = connection_name(arn)
        if name not in self.connections:
            raise TaskFailure(
                INVALID, f"no connection named {name!r} (setting STEPLOG_HTTP_CONNECTIONS)"
            )
        return self.connections[name]

    @staticmethod
    def _body(value: dict[str, Any], headers: dict[str, str]) -> bytes | None:
        if "RequestBody" not in value:
            return None
        body = value["RequestBody"]
        transform = value.get("Transform") or {}
        encoding = (
            transform.get("RequestBodyEncoding", "NONE") if isinstance(transform, dict) else None
        )
        has_type = any(k.lower() == "content-type" for k in headers)
        if encoding == "URL_ENCODED":
            if not isinstance(body, dict):
                raise TaskFailure(INVALID, "a URL_ENCODED RequestBody must be an object")
            if not has_type:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            return urllib.parse.urlencode(_query_pairs(body)).encode()
        if encoding != "NONE":
            raise TaskFailure(INVALID, "Transform.RequestBodyEncoding must be NONE or URL_ENCODED")
        if isinstance(body, str):
            if not has_type:
                headers["Content-Type"] = "text/plain; charset=utf-8"
            return body.encode()
        if not has_type:
            headers["Content-Type"] = "application/json"
        return msgspec.json.encode(body)


def _lower(connection: Connection) -> set[str]:
    names = {h.lower() for h in connection.headers}
    return names | ({"authorization"} if connection.basic is not None else set())


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _string_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TaskFailure(INVALID, f"{field} must be an object")
    out: dict[str, str] = {}
    for name, item in value.items():
        text = _scalar(item)
        if text is None or any(c in text or c in name for c in "\r\n\x00"):
            raise TaskFailure(INVALID, f"{field}.{name} must be a single-line string")
        out[name] = text
    return out


def _query_pairs(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise TaskFailure(INVALID, "QueryParameters must be an object")
    pairs: list[tuple[str, str]] = []
    for name, item in value.items():
        for each in item if isinstance(item, list) else [item]:
            text = _scalar(each)
            if text is None:
                raise TaskFailure(INVALID, f"QueryParameters.{name}: strings, numbers or lists")
            pairs.append((name, text))
    return pairs


def _with_query(url: str, pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return url
    parts = urllib.parse.urlsplit(url)
    query = "&".join(q for q in (parts.query, urllib.parse.urlencode(pairs)) if q)
    return urllib.parse.urlunsplit(parts._replace(query=query))


def result_of(status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> dict[str, Any]:
    """The task's result, as AWS's HTTP Task gives it (see the module docstring)."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    text = body.decode("utf-8", "replace")
    response_body: Any = text
    media = content_type.split(";")[0].strip().lower()
    if body and (media == "application/json" or media.endswith("+json")):
        try:
            response_body = json.loads(text)
        except ValueError:
            response_body = text
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return {
        "StatusCode": status,
        "StatusText": phrase,
        "Headers": grouped,
        "ResponseBody": response_body,
    }


def cause_of(result: dict[str, Any]) -> str:
    """The result as JSON, its body cut to BODY_IN_CAUSE characters, and the whole kept
    under MAX_CAUSE (AWS's bound on a cause) by leaving the headers out if need be."""
    body = result["ResponseBody"]
    if not isinstance(body, str):
        body = json.dumps(body, separators=(",", ":"))
    shown = {**result, "ResponseBody": body[:BODY_IN_CAUSE]}
    cause = json.dumps(shown, separators=(",", ":"))
    if len(cause) > MAX_CAUSE:
        cause = json.dumps({**shown, "Headers": {}}, separators=(",", ":"))
    return cause


def register_http_task(
    registry: HandlerRegistry, outbound: Outbound, connections: Mapping[str, Connection]
) -> None:
    """Add the HTTP task's handler (the outbound session is the caller's to open and close)."""
    registry.register(HTTP_INVOKE, HttpInvoke(outbound, connections))
