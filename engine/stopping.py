"""Waiting that a stop request cuts short: every loop of the process pauses this way,
so that setting its stop event ends a back-off or a poll interval at once. Also work
that a stop must not interrupt (`shielded`), and helper tasks that a stop ends
(`cancel_and_wait`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("steplog")


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def shielded(work: Awaitable[T], what: str) -> T:
    """Await ``work`` shielded from cancellation. When the caller is cancelled
    meanwhile, the work goes on, and an exception it ends with is logged (never
    dropped unobserved, as a bare ``asyncio.shield`` would)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: log_failure(done, what))
        raise


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], resend_s: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again every
    ``resend_s`` a task that is still running. One cancellation is not always enough:
    on Python 3.11, ``asyncio.wait_for`` (which redis-py's cluster client awaits every
    write with; asyncpg carries its own, fixed one) returns its result, swallowing the
    cancellation, when the cancellation arrives as its inner await completes
    (CPython gh-86296, fixed in 3.12); a keeper's loop then goes on to its next sleep,
    and a single cancel-and-gather waits for it forever (the likely cause of an engine
    that once never returned from its stop on the Redis Cluster). What the tasks ended
    with is not raised here: log it where it matters (`log_failure`)."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=resend_s)
    for task in tasks:  # (retrieved, as gather(return_exceptions=True) would)
        if not task.cancelled():
            task.exception()


def log_failure(task: asyncio.Future[Any], what: str) -> None:
    """A done-callback for background tasks: log the exception ``task`` ended with, so
    none goes unobserved ("Task exception was never retrieved")."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", what, exc_info=exc)
