"""`Client`: the blocking face of `AsyncClient`, for code without asyncio. It runs one
`AsyncClient` on an event loop of its own in a background thread and waits for each
call, so the two never differ in behaviour (one source of truth).

    with Client("http://127.0.0.1:8080") as steplog:     # key from STEPLOG_API_KEY
        started = steplog.start("order", {"amount": 250}, name="order-o-1")
        print(steplog.wait(started.execution_id, timeout_s=60).status)
        for event in steplog.history(started.execution_id):
            print(event.seq, event.type)

A `Client` may be shared by threads. `activity_worker` gives an `ActivityWorker`
whose `run` blocks (`stop` may be called from any thread or a signal handler).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

from steplog.client.aio import AsyncClient
from steplog.client.types import (
    Activity,
    ActivityTask,
    EventOut,
    ExecutionList,
    ExecutionOut,
    ValidationResult,
    WorkflowOut,
)
from steplog.client.worker import ActivityHandler, ActivityWorker

T = TypeVar("T")


class Client:
    """See the module docstring; the arguments are `AsyncClient`'s."""

    def __init__(self, base_url: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="steplog-client", daemon=True
        )
        self._thread.start()
        self.aio = AsyncClient(base_url, **options)

    def _run(self, call: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await call

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result()

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and not self._loop.is_closed():
                self._run(aclose())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self.aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the calls of AsyncClient, one for one (their docstrings say more) ----------

    def register(
        self,
        name: str,
        definition: Mapping[str, Any],
        *,
        type: Literal["STANDARD", "EXPRESS"] = "STANDARD",
    ) -> WorkflowOut:
        return self._run(self.aio.register(name, definition, type=type))

    def validate(self, definition: Mapping[str, Any]) -> ValidationResult:
        return self._run(self.aio.validate(definition))

    def describe_workflow(self, name: str, version: int | None = None) -> WorkflowOut:
        return self._run(self.aio.describe_workflow(name, version))

    def list_workflows(self) -> list[WorkflowOut]:
        return self._run(self.aio.list_workflows())

    def start(self, workflow: str, input: Any = None, *, name: str | None = None) -> ExecutionOut:
        return self._run(self.aio.start(workflow, input, name=name))

    def describe(self, execution_id: str) -> ExecutionOut:
        return self._run(self.aio.describe(execution_id))

    def stop(
        self, execution_id: str, *, error: str | None = None, cause: str | None = None
    ) -> ExecutionOut:
        return self._run(self.aio.stop(execution_id, error=error, cause=cause))

    def wait(
        self, execution_id: str, *, timeout_s: float | None = None, **options: Any
    ) -> ExecutionOut:
        return self._run(self.aio.wait(execution_id, timeout_s=timeout_s, **options))

    def list_executions(self, **filters: Any) -> ExecutionList:
        return self._run(self.aio.list_executions(**filters))

    def executions(self, **filters: Any) -> Iterator[ExecutionOut]:
        return self._iterate(self.aio.executions(**filters))

    def history(self, execution_id: str, **options: Any) -> Iterator[EventOut]:
        return self._iterate(self.aio.history(execution_id, **options))

    def events(self, execution_id: str, *, after: int = 0) -> Iterator[EventOut]:
        return self._iterate(self.aio.events(execution_id, after=after))

    def state(self, execution_id: str, seq: int | None = None) -> dict[str, Any]:
        return self._run(self.aio.state(execution_id, seq))

    def send_task_success(self, task_token: str, output: Any) -> None:
        self._run(self.aio.send_task_success(task_token, output))

    def send_task_failure(
        self, task_token: str, *, error: str | None = None, cause: str | None = None
    ) -> None:
        self._run(self.aio.send_task_failure(task_token, error=error, cause=cause))

    def send_task_heartbeat(self, task_token: str) -> None:
        self._run(self.aio.send_task_heartbeat(task_token))

    def create_activity(self, name: str) -> Activity:
        return self._run(self.aio.create_activity(name))

    def list_activities(self) -> list[Activity]:
        return self._run(self.aio.list_activities())

    def describe_activity(self, name: str) -> Activity:
        return self._run(self.aio.describe_activity(name))

    def delete_activity(self, name: str) -> None:
        self._run(self.aio.delete_activity(name))

    def poll_activity(
        self, name: str, *, worker_name: str | None = None, wait_s: int = 60
    ) -> ActivityTask | None:
        return self._run(self.aio.poll_activity(name, worker_name=worker_name, wait_s=wait_s))

    def activity_worker(
        self, name: str, handler: ActivityHandler, **options: Any
    ) -> SyncActivityWorker:
        """An activity worker on this client; a plain-function handler runs in a thread."""
        return SyncActivityWorker(self, ActivityWorker(self.aio, name, handler, **options))


class SyncActivityWorker:
    """`ActivityWorker` driven from a thread: `run` blocks until `stop`."""

    def __init__(self, client: Client, worker: ActivityWorker) -> None:
        self.client = client
        self.worker = worker

    def run(self) -> None:
        self.client._run(self.worker.run())

    def stop(self) -> None:
        """Safe from any thread and from a signal handler."""
        self.client._loop.call_soon_threadsafe(self.worker.stop)
