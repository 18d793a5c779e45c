"""`AsyncClient`: steplog's HTTP API from asyncio (aiohttp), typed with the server's
own msgspec types. The sync `Client` (steplog/client/sync.py) runs this one.

    async with AsyncClient("http://127.0.0.1:8080", api_key=KEY) as steplog:
        await steplog.register("order", definition)
        started = await steplog.start("order", {"amount": 250}, name="order-o-1")
        done = await steplog.wait(started.execution_id, timeout_s=60)
        async for event in steplog.history(done.execution_id):
            ...

The API key comes from ``api_key`` or else STEPLOG_API_KEY, the base URL from
``base_url`` or else STEPLOG_URL (default http://127.0.0.1:8080). ``namespace`` sends
the Steplog-Namespace header (a global admin key choosing its namespace).

Errors are raised as the classes of steplog/client/errors.py. Idempotent calls (every
GET, register, start with a name, stop, heartbeats, activity create/delete/poll) are
retried on 503, 429 and a connection that fails, up to ``retries`` times, after the
server's Retry-After when it sends one, else an exponential back-off with jitter. A
start without a name or a task success/failure is sent once: a repeat could act twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
import msgspec

from steplog.client.errors import (
    RateLimited,
    SteplogClientError,
    Unavailable,
    WaitTimeout,
    error_from,
)
from steplog.client.sse import parse_events
from steplog.client.types import (
    Activity,
    ActivityList,
    ActivityTask,
    EventOut,
    ExecutionList,
    ExecutionOut,
    History,
    ValidationResult,
    WorkflowList,
    WorkflowOut,
)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"
NAMESPACE_HEADER = "Steplog-Namespace"
FEED_SILENCE_S = 45.0
TERMINAL_EVENT_TYPES = frozenset(
    {"ExecutionSucceeded", "ExecutionFailed", "ExecutionTimedOut", "ExecutionAborted"}
)
_encode = msgspec.json.Encoder().encode


class _ExecutionWire(msgspec.Struct):
    """ExecutionOut as it travels: msgspec decodes ``Raw | None`` as None only, so the
    output is read as Raw (``null`` included) and made None afterwards."""

    execution_id: str
    workflow: str
    version: int
    name: str
    status: str
    input: msgspec.Raw
    output: msgspec.Raw
    error: str | None
    cause: str | None
    started_at: str
    stopped_at: str | None

    def out(self) -> ExecutionOut:
        fields = msgspec.structs.asdict(self)
        if bytes(self.output) == b"null":
            fields["output"] = None
        return ExecutionOut(**fields)


class _ExecutionListWire(msgspec.Struct):
    executions: list[_ExecutionWire]
    next_cursor: str | None


def _seg(value: str) -> str:
    """A path segment, percent-encoded (an id or a name never changes the route)."""
    return urllib.parse.quote(str(value), safe="")


def _params(**values: Any) -> dict[str, str]:
    """Query parameters: None left out, booleans as true/false."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


class AsyncClient:
    """See the module docstring. Use it as an async context manager, or call `close`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        namespace: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.base_url = (base_url or env.get("STEPLOG_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else env.get("STEPLOG_API_KEY")
        self._headers = {"Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        if namespace:
            self._headers[NAMESPACE_HEADER] = namespace
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    # --- transport -------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        idempotent: bool = True,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of a 2xx answer; an error answer raised as its class. Retried
        as the module docstring says."""
        data = None if body is None else _encode(body)
        headers = {"Content-Type": "application/json"} if data is not None else None
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        attempt = 0
        while True:
            try:
                async with self._http().request(
                    method,
                    self.base_url + path,
                    data=data,
                    params=params,
                    headers=headers,
                    timeout=timeout,
                ) as resp:
                    payload = await resp.read()
                    if resp.status < 400:
                        return resp.status, payload
                    error = error_from(resp.status, payload, resp.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                error = Unavailable(0, "connection_failed", f"{method} {path}: {exc!r}")
                error.__cause__ = exc
            retryable = isinstance(error, Unavailable) or (
                isinstance(error, RateLimited) and error.retry_after is not None
            )
            if not (idempotent and retryable) or attempt >= self.retries:
                raise error
            await asyncio.sleep(self._delay(attempt, error))
            attempt += 1

    def _delay(self, attempt: int, error: SteplogClientError) -> float:
        if error.retry_after is not None:
            return min(error.retry_after, self.max_backoff_s)
        ceiling = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return random.uniform(ceiling / 2, ceiling)

    async def _execution(self, method: str, path: str, **options: Any) -> ExecutionOut:
        return (await self._call(_ExecutionWire, method, path, **options)).out()

    async def _call(self, kind: type[T], method: str, path: str, **options: Any) -> T:
        _, payload = await self._request(method, path, **options)
        return msgspec.json.decode(payload, type=kind)

    # --- workflows -------------------------------------------------------------------

    async def register(
        self,
        name: str,
        definition: Mapping[str, Any],
        *,
        type: Literal["STANDARD", "EXPRESS"] = "STANDARD",
    ) -> WorkflowOut:
        """Register ``definition`` as workflow ``name``: a new version when it changed,
        the latest version when it is the same (PUT, so retried safely)."""
        body = {"definition": definition, "type": type}
        return await self._call(WorkflowOut, "PUT", f"/v1/workflows/{_seg(name)}", body=body)

    async def validate(self, definition: Mapping[str, Any]) -> ValidationResult:
        body = {"definition": definition}
        return await self._call(ValidationResult, "POST", "/v1/workflows:validate", body=body)

    async def describe_workflow(self, name: str, version: int | None = None) -> WorkflowOut:
        params = _params(version=version)
        return await self._call(WorkflowOut, "GET", f"/v1/workflows/{_seg(name)}", params=params)

    async def list_workflows(self) -> list[WorkflowOut]:
        return (await self._call(WorkflowList, "GET", "/v1/workflows")).workflows

    # --- executions ------------------------------------------------------------------

    async def start(
        self, workflow: str, input: Any = None, *, name: str | None = None
    ) -> ExecutionOut:
        """Start an execution of ``workflow``. With a ``name`` the start is idempotent
        (the same name and input give back the same execution; another input is a
        `Conflict`) and therefore retried; without one it is sent once. ``input`` is any
        JSON value (None means ``{}``), or ``msgspec.Raw`` JSON text sent as it is."""
        body: dict[str, Any] = {"input": {} if input is None else input}
        if name is not None:
            body["name"] = name
        return await self._execution(
            "POST",
            f"/v1/workflows/{_seg(workflow)}/executions",
            body=body,
            idempotent=name is not None,
        )

    async def describe(self, execution_id: str) -> ExecutionOut:
        return await self._execution("GET", f"/v1/executions/{_seg(execution_id)}")

    async def stop(
        self, execution_id: str, *, error: str | None = None, cause: str | None = None
    ) -> ExecutionOut:
        """Stop a running execution (ABORTED); an ended one is returned unchanged."""
        body = {k: v for k, v in (("error", error), ("cause", cause)) if v is not None}
        return await self._execution("POST", f"/v1/executions/{_seg(execution_id)}/stop", body=body)

    async def wait(
        self,
        execution_id: str,
        *,
        timeout_s: float | None = None,
        min_interval_s: float = 0.05,
        max_interval_s: float = 1.0,
    ) -> ExecutionOut:
        """The execution once it is no longer RUNNING: polled, the pause doubling from
        ``min_interval_s`` to ``max_interval_s``. `WaitTimeout` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        pause = min_interval_s
        while True:
            execution = await self.describe(execution_id)
            if execution.status != "RUNNING":
                return execution
            if deadline is not None and loop.time() + pause > deadline:
                raise WaitTimeout(
                    f"execution {_seg(execution_id)} still RUNNING after {timeout_s} s"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, max_interval_s)

    async def list_executions(
        self,
        *,
        workflow: str | None = None,
        version: int | None = None,
        status: str | None = None,
        name_prefix: str | None = None,
        started_after: str | None = None,
        started_before: str | None = None,
        stopped_after: str | None = None,
        stopped_before: str | None = None,
        order: Literal["desc", "asc"] = "desc",
        limit: int = 100,
        cursor: str | None = None,
    ) -> ExecutionList:
        """One page of executions (``next_cursor`` asks for the next); timestamps are
        RFC 3339 strings with an offset."""
        params = _params(
            workflow=workflow,
            version=version,
            status=status,
            name_prefix=name_prefix,
            started_after=started_after,
            started_before=started_before,
            stopped_after=stopped_after,
            stopped_before=stopped_before,
            order=order,
            limit=limit,
            cursor=cursor,
        )
        page = await self._call(_ExecutionListWire, "GET", "/v1/executions", params=params)
        return ExecutionList([e.out() for e in page.executions], page.next_cursor)

    async def executions(self, **filters: Any) -> AsyncIterator[ExecutionOut]:
        """Every execution matching the filters of `list_executions`, page after page."""
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.list_executions(cursor=cursor, **filters)
            for execution in page.executions:
                yield execution
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def history_page(
        self,
        execution_id: str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        reverse: bool = False,
        include_data: bool = True,
    ) -> History:
        params = _params(limit=limit, cursor=cursor, reverse=reverse, include_data=include_data)
        return await self._call(
            History, "GET", f"/v1/executions/{_seg(execution_id)}/history", params=params
        )

    async def history(
        self,
        execution_id: str,
        *,
        page_size: int = 100,
        reverse: bool = False,
        include_data: bool = True,
    ) -> AsyncIterator[EventOut]:
        """Every event of the execution so far, read a page at a time."""
        cursor = None
        while True:
            page = await self.history_page(
                execution_id,
                limit=page_size,
                cursor=cursor,
                reverse=reverse,
                include_data=include_data,
            )
            for event in page.events:
                yield event
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def state(self, execution_id: str, seq: int | None = None) -> dict[str, Any]:
        """The execution's state replayed up to ``seq`` (the end when None)."""
        return await self._call(
            dict[str, Any],
            "GET",
            f"/v1/executions/{_seg(execution_id)}/state",
            params=_params(seq=seq),
        )

    async def events(self, execution_id: str, *, after: int = 0) -> AsyncIterator[EventOut]:
        """The live feed (Server-Sent Events): the events after seq ``after``, then each
        one as it commits, ending after the terminal event. A dropped connection is
        resumed from the last seq received (Last-Event-ID), so no event is missed or
        repeated; `Unavailable` once ``retries`` reconnections in a row fail."""
        path = f"{self.base_url}/v1/executions/{_seg(execution_id)}/events"
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            # The feed sends a comment every 15 s when idle: silence for longer is a
            # dead connection, resumed like any other.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout_s, sock_read=FEED_SILENCE_S
            )
            try:
                async with self._http().get(path, headers=headers, timeout=timeout) as resp:
                    if resp.status >= 400:
                        raise error_from(
                            resp.status, await resp.read(), resp.headers.get("Retry-After")
                        )
                    async for event in parse_events(resp.content):
                        failures = 0
                        decoded = msgspec.json.decode(event.data, type=EventOut)
                        after = decoded.seq
                        yield decoded
                        if decoded.type in TERMINAL_EVENT_TYPES:
                            return
                # The server ends the feed only after the terminal event (or at its
                # shutdown): resume to find out which.
                if after and await self._ended_at(execution_id, after):
                    return
                error: SteplogClientError = Unavailable(0, "feed_ended", "the feed closed early")
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                error = Unavailable(0, "connection_failed", f"event feed: {exc!r}")
            except Unavailable as exc:
                error = exc
            if failures >= self.retries:
                raise error
            await asyncio.sleep(self._delay(failures, error))
            failures += 1

    async def _ended_at(self, execution_id: str, seq: int) -> bool:
        """Whether the execution's terminal event is at or before ``seq`` (a feed asked
        to start past the end is empty, and ends at once)."""
        page = await self.history_page(execution_id, limit=1, reverse=True, include_data=False)
        last = page.events[0] if page.events else None
        return last is not None and last.type in TERMINAL_EVENT_TYPES and last.seq <= seq

    # --- task tokens (callback pattern) and activities --------------------------------

    async def send_task_success(self, task_token: str, output: Any) -> None:
        """Report the task of ``task_token`` succeeded with ``output`` (sent once)."""
        body = {"taskToken": task_token, "output": output}
        await self._request("POST", "/v1/tasks/success", body=body, idempotent=False)

    async def send_task_failure(
        self, task_token: str, *, error: str | None = None, cause: str | None = None
    ) -> None:
        """Report the task of ``task_token`` failed (sent once)."""
        body: dict[str, Any] = {"taskToken": task_token}
        if error is not None:
            body["error"] = error
        if cause is not None:
            body["cause"] = cause
        await self._request("POST", "/v1/tasks/failure", body=body, idempotent=False)

    async def send_task_heartbeat(self, task_token: str) -> None:
        await self._request("POST", "/v1/tasks/heartbeat", body={"taskToken": task_token})

    async def create_activity(self, name: str) -> Activity:
        """Create the activity ``name`` (or return it when it exists)."""
        return await self._call(Activity, "POST", "/v1/activities", body={"name": name})

    async def list_activities(self) -> list[Activity]:
        """Every activity (read a page at a time)."""
        found: list[Activity] = []
        cursor: str | None = None
        while True:
            params = _params(limit=1000, cursor=cursor)
            page = await self._call(ActivityList, "GET", "/v1/activities", params=params)
            found += page.activities
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    async def describe_activity(self, name: str) -> Activity:
        return await self._call(Activity, "GET", f"/v1/activities/{_seg(name)}")

    async def delete_activity(self, name: str) -> None:
        await self._request("DELETE", f"/v1/activities/{_seg(name)}")

    async def poll_activity(
        self, name: str, *, worker_name: str | None = None, wait_s: int = 60
    ) -> ActivityTask | None:
        """Long-poll the activity for a task (up to ``wait_s`` seconds, 0..60): the task,
        or None when none came in that time."""
        body = {} if worker_name is None else {"workerName": worker_name}
        status, payload = await self._request(
            "POST",
            f"/v1/activities/{_seg(name)}/poll",
            body=body,
            params={"wait": str(wait_s)},
            timeout_s=wait_s + self.timeout_s,
        )
        if status == 204 or not payload:
            return None
        return msgspec.json.decode(payload, type=ActivityTask)
