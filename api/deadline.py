"""The request deadline: an API request that has not answered within
``ApiConfig.request_timeout_s`` is cancelled and answered 503 problem+json
``service_unavailable`` with ``Retry-After``, instead of hanging (e.g. on a table lock
or a PostgreSQL that stopped answering; the statements themselves time out sooner, at
``Settings.api_statement_timeout_ms``).

The deadline covers authentication, the rate limit and the handler. It is paused while
the body is read (which has its own deadline, ``body_timeout_s``: 408) and lifted once a
streaming response has sent its headers (the SSE feed, history.jsonl are bounded until
then). Cancelling a handler cancels its PostgreSQL statement (asyncpg asks the server to
cancel it) and rolls its transaction back. A transaction that committed before the
deadline stays committed: a start answered 503 may have started its execution; sent
again with the same execution name it is answered with that execution (200), never
started twice (docs/api.md "Retrying").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api.keys import CONFIG
from api.problems import RETRY_AFTER_SECONDS, Handler, problem

log = logging.getLogger("steplog.api")

DEADLINE = web.RequestKey("steplog_deadline", asyncio.Timeout)


@web.middleware
async def deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the rest of the chain under the request's deadline (see the module doc)."""
    seconds = request.app[CONFIG].request_timeout_s
    try:
        async with asyncio.timeout(seconds) as deadline:
            request[DEADLINE] = deadline
            try:
                return await handler(request)
            finally:
                del request[DEADLINE]
    except TimeoutError:
        if not deadline.expired():
            raise
        log.warning(
            "request deadline of %gs passed: %s %s; answered 503",
            seconds,
            request.method,
            request.path,
        )
        return problem(
            request,
            503,
            "service_unavailable",
            f"the request did not finish within {seconds:g} s; retry later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )


def _reschedule(deadline: asyncio.Timeout, when: float | None) -> None:
    if not deadline.expired():
        deadline.reschedule(when)


@contextlib.asynccontextmanager
async def paused(request: web.Request) -> AsyncIterator[None]:
    """The request's deadline stopped while the block runs, then given the time it
    had left (for reading the body, which has a deadline of its own)."""
    deadline = request.get(DEADLINE)
    when = None if deadline is None else deadline.when()
    if deadline is None or when is None:
        yield
        return
    loop = asyncio.get_running_loop()
    remaining = when - loop.time()
    _reschedule(deadline, None)
    try:
        yield
    finally:
        _reschedule(deadline, loop.time() + max(remaining, 0.0))


async def lift_when_streaming(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp signal (on_response_prepare): a response whose headers go out while its
    handler still runs is a stream; from then on it is not cut short by the deadline."""
    deadline = request.get(DEADLINE)
    if deadline is not None:
        _reschedule(deadline, None)
