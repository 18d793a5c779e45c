"""HTTP hygiene: response headers, CORS, and what a request body must be.

Every response (problem+json, streams and aiohttp's own errors included) carries:
    X-Content-Type-Options: nosniff
    Referrer-Policy: no-referrer
    Cache-Control: no-store       (unless the route set its own: the SSE feed's no-cache)
    Server: steplog               (never the Python or aiohttp version)
CORS is off (no Access-Control-* header at all) unless ``ApiConfig.cors_allow_origins``
lists origins: a request whose Origin is listed (or any, with "*") gets
Access-Control-Allow-Origin and Vary: Origin; a preflight (OPTIONS with
Access-Control-Request-Method) from a listed origin is answered 204 with the allowed
methods and headers, from any other origin 403 `cors_origin_not_allowed`.

A request body (POST, PUT, PATCH with a non-empty body) must be declared
``application/json`` (or a ``+json`` type), else 415 `unsupported_media_type`; it
is read whole, before the handler runs, within ``ApiConfig.body_timeout_s``
(408 `request_timeout` and the connection closed when the client is slower); the
request deadline (api/deadline.py) does not run meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from api.deadline import paused
from api.keys import CONFIG
from api.problems import (
    Handler,
    IncompleteBody,
    RequestTimeout,
    UnsupportedMediaType,
    problem,
)

SERVER = "steplog"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CORS_METHODS = "GET, HEAD, POST, PUT, OPTIONS"
CORS_REQUEST_HEADERS = "Content-Type, Last-Event-ID, X-Request-ID, traceparent, tracestate"
CORS_EXPOSED_HEADERS = "Location, Retry-After, X-Request-ID, traceparent"
CORS_MAX_AGE_S = "600"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def set_common_headers(headers: dict[str, str] | web.StreamResponse) -> None:
    """The headers every response carries (also used for aiohttp's own error pages)."""
    target = headers.headers if isinstance(headers, web.StreamResponse) else headers
    target.update(SECURITY_HEADERS)
    target.setdefault("Cache-Control", "no-store")
    target["Server"] = SERVER


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp signal: runs for every response of the application just before its
    headers go out."""
    set_common_headers(response)
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")


def _allowed_origin(request: web.Request) -> str | None:
    """The value of Access-Control-Allow-Origin for this request, None for no CORS."""
    allowed = request.app[CONFIG].cors_allow_origins
    origin = request.headers.get("Origin")
    if not allowed or origin is None:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights (only when an allow-list is configured)."""
    if (
        request.method == "OPTIONS"
        and request.app[CONFIG].cors_allow_origins
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    ):
        if _allowed_origin(request) is None:
            return problem(
                request, 403, "cors_origin_not_allowed", "this origin may not call the API"
            )
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_REQUEST_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_S,
            },
        )
    return await handler(request)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


log = logging.getLogger("steplog.api")


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a body that is not JSON; read the body within the body timeout."""
    if request.method in _BODY_METHODS and request.body_exists:
        declared = request.headers.get("Content-Type")
        if declared is None or not _is_json(request.content_type):
            if request.match_info.http_exception is None:  # a route exists
                raise UnsupportedMediaType(
                    "the request body must be JSON, sent with Content-Type: application/json"
                )
        try:
            if request.content.is_eof():
                # All of it arrived already (a small body comes with its headers): the
                # read waits for nothing, so neither deadline needs to move.
                await request.read()  # cached: the handler's read() returns it
            else:
                # The request's deadline waits while the client sends (408 has its own).
                async with paused(request), asyncio.timeout(request.app[CONFIG].body_timeout_s):
                    await request.read()
        except TimeoutError:
            timeout = RequestTimeout(
                f"the request body did not arrive within {request.app[CONFIG].body_timeout_s:g} s"
            )
            response = problem(request, timeout.status, timeout.code, timeout.message)
            # The rest of the body may still come: the connection cannot be reused.
            response.force_close()
            return response
        except ConnectionError:
            # The client hung up mid-body (aiohttp: ConnectionResetError "Connection
            # lost"): its own doing, not a fault of ours, so one line and no traceback.
            # Nothing was read, so nothing was done; the answer reaches nobody.
            log.info("client closed the connection before sending its whole body")
            gone = IncompleteBody("the connection closed before the whole body arrived")
            response = problem(request, gone.status, gone.code, gone.message)
            response.force_close()
            return response
    return await handler(request)
