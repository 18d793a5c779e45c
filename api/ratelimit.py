"""The rate-limit middleware: one token of the request's budget from its namespace's
bucket and its API key's (engine/limits.py), before the handler runs.

It runs right after authentication and reads who is calling with `identity_of` (no key
id: the namespace's bucket only). Budgets: ``starts`` (POST
/v1/workflows/{name}/executions), ``writes`` (other PUT, POST, PATCH, DELETE), ``reads``
(GET, HEAD). Not limited: OPTIONS (CORS preflight), /health/*, /metrics, /docs and
/v1/openapi.json.

Every limited response, allowed or refused, errors included, carries
``RateLimit-Limit`` (the size of the tightest bucket), ``RateLimit-Remaining`` (whole
tokens left in it) and ``RateLimit-Reset`` (seconds until it is full again); a refusal
is 429 problem+json ``rate_limited`` with ``Retry-After`` (seconds until a token is
there). Redis away: reads pass without these headers; starts and writes get 503
``service_unavailable`` with Retry-After.
"""

from __future__ import annotations

import math

from aiohttp import web

from api.identity import identity_of
from api.keys import CONFIG
from api.problems import Handler
from engine.errors import SteplogError
from engine.limits import Decision, Limits

LIMITS = web.AppKey("steplog_limits", Limits)
DECISION = web.RequestKey("steplog_rate_decision", Decision)

STARTS_ROUTE = "/v1/workflows/{name}/executions"
_UNLIMITED_PATHS = frozenset({"/metrics", "/docs", "/v1/openapi.json"})


class RateLimited(SteplogError):
    """Over the request budget of the caller's key or namespace."""

    code = "rate_limited"
    status = 429


def budget_of(request: web.Request) -> str | None:
    """The budget ``request`` takes from; None when it is not rate-limited."""
    path = request.path
    if request.method == "OPTIONS" or path in _UNLIMITED_PATHS or path.startswith("/health/"):
        return None
    if request.method in ("GET", "HEAD"):
        return "reads"
    if request.method == "POST":
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical == STARTS_ROUTE:
            return "starts"
    return "writes"


@web.middleware
async def ratelimit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take a token or refuse with 429 (see the module doc)."""
    budget = budget_of(request)
    if budget is None:
        return await handler(request)
    identity = identity_of(request, request.app[CONFIG].namespace)
    decision = await request.app[LIMITS].check(identity.namespace, identity.key_id, budget)
    request[DECISION] = decision
    if not decision.allowed:
        raise RateLimited(
            f"over the {budget} rate limit of "
            + (
                "this API key"
                if identity.key_id is not None
                else f"namespace {identity.namespace!r}"
            )
            + "; retry after the time Retry-After gives"
        )
    return await handler(request)


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the RateLimit-* headers of the request's decision (and
    Retry-After on a refusal), whatever built the response."""
    decision = request.get(DECISION)
    if decision is None or decision.result is None:
        return
    result = decision.result
    response.headers["RateLimit-Limit"] = str(result.limit)
    response.headers["RateLimit-Remaining"] = str(result.remaining)
    response.headers["RateLimit-Reset"] = str(math.ceil(result.reset_s))
    if not decision.allowed:
        response.headers["Retry-After"] = str(max(1, math.ceil(result.retry_after_s)))
