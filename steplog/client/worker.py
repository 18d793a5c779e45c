"""`ActivityWorker`: run an activity's tasks with a Python function.

    async def charge(order):            # or a plain function (run in a thread)
        if order["amount"] > 1000:
            raise ActivityFailure("OrderRejected", "too large")
        return {"charged": order["amount"]}

    worker = ActivityWorker(client, "charge", charge, heartbeat_s=10)
    await worker.run(handle_signals=True)     # until SIGTERM / SIGINT or worker.stop()

It long-polls the activity, runs the handler on each task's input (a handler taking two
arguments also gets the `ActivityTask`, whose ``idempotency_key`` is the same for every
delivery of one attempt: make side effects once per key) and reports the
result with the task's token: the handler's return value as the output, an
`ActivityFailure` as its error and cause, any other exception as its class name and
message. While a handler runs, a heartbeat is sent every ``heartbeat_s`` seconds (for
Task states with HeartbeatSeconds). ``concurrency`` tasks run at once.

Stopping is graceful: `stop()` (or SIGTERM / SIGINT with ``handle_signals``) ends the
polling and lets the running tasks finish and report, then `run` returns. A poll in
flight at that moment is cancelled; a task the server handed out in that instant goes
unreported, and the server hands it out again once its heartbeat or timeout lapses (the
at-least-once contract of activities).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from steplog.client.aio import AsyncClient
from steplog.client.errors import SteplogClientError
from steplog.client.types import ActivityTask

log = logging.getLogger("steplog.client.worker")

# handler(input) or handler(input, task): the second form also gets the ActivityTask
# (its task_token and idempotency_key, the same for every delivery of one attempt).
ActivityHandler = Callable[..., Any | Awaitable[Any]]
# Cause texts are bounded by the API (32768 characters).
MAX_CAUSE = 32768


class ActivityFailure(Exception):
    """Raise from a handler to fail the task with this ASL error name and cause."""

    def __init__(self, error: str, cause: str | None = None) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


def _takes_two(handler: ActivityHandler) -> bool:
    """Whether ``handler`` takes the task as a second positional argument."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )


class ActivityWorker:
    def __init__(
        self,
        client: AsyncClient,
        name: str,
        handler: ActivityHandler,
        *,
        worker_name: str | None = None,
        concurrency: int = 1,
        heartbeat_s: float | None = None,
        poll_wait_s: int = 20,
        error_pause_s: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.name = name
        self.handler = handler
        self._wants_task = _takes_two(handler)
        self.worker_name = worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.heartbeat_s = heartbeat_s
        self.poll_wait_s = poll_wait_s
        self.error_pause_s = error_pause_s
        self._stop = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self.completed = 0  # tasks reported succeeded
        self.failed = 0  # tasks reported failed

    def stop(self) -> None:
        """Stop polling; the running tasks finish and report, then `run` returns (at
        once for a worker already stopped). Call it on the worker's event loop."""
        self._stop.set()

    async def run(self, stop: asyncio.Event | None = None, *, handle_signals: bool = False) -> None:
        """Poll and run tasks until `stop()`, the event ``stop`` is set, or (with
        ``handle_signals``) SIGTERM or SIGINT; then wait for the running ones."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        watcher = asyncio.create_task(self._follow(stop)) if stop is not None else None
        try:
            await self._poll_until_stopped()
        finally:
            if watcher is not None:
                watcher.cancel()
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._running:
                await asyncio.wait(self._running)

    async def _follow(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stop()

    async def _poll_until_stopped(self) -> None:
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                if len(self._running) >= self.concurrency:
                    await asyncio.wait(
                        [stopping, *self._running], return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                poll = asyncio.ensure_future(
                    self.client.poll_activity(
                        self.name, worker_name=self.worker_name, wait_s=self.poll_wait_s
                    )
                )
                await asyncio.wait([poll, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await poll
                    return
                try:
                    task = poll.result()
                except Exception as exc:  # an error answer, or one that does not decode
                    log.warning("polling activity %s failed: %r", self.name, exc)
                    await asyncio.wait([stopping], timeout=self.error_pause_s)
                    continue
                if task is not None:
                    running = asyncio.create_task(self._run(task))
                    self._running.add(running)
                    running.add_done_callback(self._running.discard)
        finally:
            stopping.cancel()

    async def _run(self, task: ActivityTask) -> None:
        beating = (
            asyncio.create_task(self._heartbeats(task.task_token))
            if self.heartbeat_s is not None
            else None
        )
        try:
            output = await self._call(task)
        except ActivityFailure as failure:
            await self._report_failure(task, failure.error, failure.cause)
            return
        except Exception as exc:
            log.warning("activity %s task failed: %r", self.name, exc)
            await self._report_failure(task, type(exc).__name__, str(exc))
            return
        finally:
            if beating is not None:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
        try:
            await self.client.send_task_success(task.task_token, output)
            self.completed += 1
        except SteplogClientError as exc:
            log.error("activity %s: cannot report a success: %s", self.name, exc)

    async def _call(self, task: ActivityTask) -> Any:
        args = (task.input, task) if self._wants_task else (task.input,)
        if inspect.iscoroutinefunction(self.handler):
            return await self.handler(*args)
        value = await asyncio.to_thread(self.handler, *args)
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _report_failure(self, task: ActivityTask, error: str, cause: str | None) -> None:
        try:
            await self.client.send_task_failure(
                task.task_token,
                error=error[:256],
                cause=None if cause is None else cause[:MAX_CAUSE],
            )
            self.failed += 1
        except SteplogClientError as exc:
            log.error("activity %s: cannot report a failure: %s", self.name, exc)

    async def _heartbeats(self, token: str) -> None:
        assert self.heartbeat_s is not None
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.client.send_task_heartbeat(token)
            except SteplogClientError as exc:
                log.warning("activity %s: heartbeat failed: %s", self.name, exc)
