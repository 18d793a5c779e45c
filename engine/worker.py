"""Task workers and the handler registry.

A handler is a Python callable registered under a resource name (the Task
state's ``Resource``). It receives the task input and a ``TaskContext`` whose
``idempotency_key`` names the attempt (execution id, state, attempt): a
handler with side effects uses it to make them exactly once, because tasks
run at least once. Raise ``TaskFailure(error, cause)`` to fail the task with
an ASL error a Retry or Catch can match; any other exception fails it with
the exception's class name as the error.

A ``Worker`` reads its queue's stream through the consumer group "workers",
runs each task, adds the result to the execution's trigger stream and only
then acknowledges the task (a crash in between runs the task again).
Installed packages can contribute handlers through the entry point group
``steplog.handlers`` (each entry point is a ``HandlerRegistry`` or a callable
taking one and registering into it).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any
from uuid import UUID

import msgspec

from engine import events as ev
from engine.bus import Bus, StreamEntry
from engine.runtime import TaskResultBody, encode_heartbeat, encode_task_result

log = logging.getLogger("steplog.worker")

WORKER_GROUP = "workers"


class TaskFailure(Exception):
    """Fail the task with an ASL error name and cause."""

    def __init__(self, error: str, cause: str | None = None) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


async def _no_heartbeat() -> None:
    return None


@dataclass(frozen=True, slots=True)
class TaskContext:
    execution_id: str
    state: str
    attempt: int
    task_id: str
    # Report that the task is alive (Task states with HeartbeatSeconds fail with
    # States.HeartbeatTimeout when no heartbeat arrives in time).
    heartbeat: Callable[[], Awaitable[None]] = _no_heartbeat

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}:{self.state}:{self.attempt}"


Handler = Callable[[Any, TaskContext], Any | Awaitable[Any]]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, resource: str, handler: Handler) -> None:
        self._handlers[resource] = handler

    def handler(self, resource: str) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def wrap(fn: Handler) -> Handler:
            self.register(resource, fn)
            return fn

        return wrap

    def get(self, resource: str) -> Handler | None:
        return self._handlers.get(resource)

    def __contains__(self, resource: str) -> bool:
        return resource in self._handlers

    def load_entry_points(self) -> None:
        for ep in entry_points(group="steplog.handlers"):
            target = ep.load()
            if isinstance(target, HandlerRegistry):
                self._handlers.update(target._handlers)
            else:
                target(self)


# --- built-in handlers for examples and tests ----------------------------------------


def _echo(value: Any, ctx: TaskContext) -> Any:
    return value


def _fail(value: Any, ctx: TaskContext) -> Any:
    body = value if isinstance(value, dict) else {}
    raise TaskFailure(str(body.get("error", "States.TaskFailed")), body.get("cause"))


async def _sleep(value: Any, ctx: TaskContext) -> Any:
    """Sleep ``seconds``; with ``heartbeat_every`` it reports a heartbeat that often."""
    body = value if isinstance(value, dict) else {"seconds": value}
    seconds = body.get("seconds", 1)
    every = body.get("heartbeat_every")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise TaskFailure("States.TaskFailed", "test:sleep needs a non-negative number of seconds")
    if isinstance(every, int | float) and not isinstance(every, bool) and every > 0:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(seconds)
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(float(every), left))
            await ctx.heartbeat()
    else:
        await asyncio.sleep(float(seconds))
    return value


def default_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("test:echo", _echo)
    registry.register("test:fail", _fail)
    registry.register("test:sleep", _sleep)
    return registry


_decode_task = msgspec.json.Decoder(ev.TaskScheduled)


class Worker:
    def __init__(
        self,
        bus: Bus,
        registry: HandlerRegistry,
        *,
        queue: str = "default",
        consumer: str | None = None,
        concurrency: int = 16,
        block_ms: int = 1000,
        shutdown_grace_s: float = 10.0,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.queue = queue
        self.stream = bus.tasks_stream(queue)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.block_ms = block_ms
        self.shutdown_grace_s = shutdown_grace_s
        self._running: set[asyncio.Task[None]] = set()
        self.completed = 0

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.ensure_group(self.stream, WORKER_GROUP)
        # Own pending entries first (tasks read before a restart under the same name).
        backlog = await self.bus.read_group(
            WORKER_GROUP, self.consumer, {self.stream: "0"}, count=self.concurrency
        )
        for entry in backlog:
            self._spawn(entry)
        while not stop.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                entries = await self.bus.read_group(
                    WORKER_GROUP, self.consumer, [self.stream], free, self.block_ms
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker read failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for entry in entries:
                self._spawn(entry)
        await self._drain()

    def _spawn(self, entry: StreamEntry) -> None:
        task = asyncio.create_task(self._run_task(entry))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _drain(self) -> None:
        """Give running handlers until the deadline, then cancel them unacknowledged."""
        if not self._running:
            return
        _, pending = await asyncio.wait(self._running, timeout=self.shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _run_task(self, entry: StreamEntry) -> None:
        try:
            execution_id = UUID(entry.fields["execution_id"].decode())
            scheduled = _decode_task.decode(entry.fields["data"])
        except (KeyError, ValueError, msgspec.DecodeError):
            log.error("dropping malformed task %s", entry.id)
            await self.bus.dead_letter(entry, WORKER_GROUP, "malformed")
            return

        async def heartbeat() -> None:
            await self.bus.add_trigger(
                execution_id, "heartbeat", encode_heartbeat(scheduled.task_id)
            )

        ctx = TaskContext(
            execution_id=str(execution_id),
            state=scheduled.name,
            attempt=scheduled.attempt,
            task_id=scheduled.task_id,
            heartbeat=heartbeat,
        )
        result = await self._call(scheduled, ctx)
        # Recording the outcome is shielded: a shutdown must not lose a finished result.
        await asyncio.shield(self._report(execution_id, entry, result))

    async def _call(self, scheduled: ev.TaskScheduled, ctx: TaskContext) -> TaskResultBody:
        handler = self.registry.get(scheduled.resource)
        if handler is None:
            return TaskResultBody(
                task_id=scheduled.task_id,
                ok=False,
                error="States.TaskFailed",
                cause=f"no handler is registered for resource {scheduled.resource!r}",
            )
        try:
            value = handler(scheduled.input, ctx)
            if inspect.isawaitable(value):
                value = await value
            return TaskResultBody(task_id=scheduled.task_id, ok=True, output=value)
        except TaskFailure as failure:
            return TaskResultBody(
                task_id=scheduled.task_id, ok=False, error=failure.error, cause=failure.cause
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("task %s failed: %r", scheduled.task_id, exc)
            return TaskResultBody(
                task_id=scheduled.task_id, ok=False, error=type(exc).__name__, cause=str(exc)
            )

    async def _report(self, execution_id: UUID, entry: StreamEntry, result: TaskResultBody) -> None:
        await self.bus.add_trigger(execution_id, "task_result", encode_task_result(result))
        await self.bus.ack(self.stream, WORKER_GROUP, [entry.id])
        self.completed += 1
