"""Waiting that a stop request cuts short: every loop of the process pauses this way,
so that setting its stop event ends a back-off or a poll interval at once. Also work
that a stop must not interrupt (`shielded`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
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


def log_failure(task: asyncio.Future[Any], what: str) -> None:
    """A done-callback for background tasks: log the exception ``task`` ended with, so
    none goes unobserved ("Task exception was never retrieved")."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", what, exc_info=exc)
