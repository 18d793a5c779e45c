"""The query side: everything the API (and the CLI's read commands) reads.

`Queries` is built once by the composition root from the event store, the
pool the read models live in, and a Redis ping (a plain callable, so the read
side does not depend on the bus). Reads of the read models prefer the
projection and fall back to replaying the event store where the projection
may lag; every PostgreSQL failure surfaces as `engine.errors.Unavailable`
(the store translates its own calls; read-model SQL runs under
`engine.adapters.postgres.translate_errors`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, Protocol
from uuid import UUID

import asyncpg
import msgspec

from engine.adapters.notifier import EventNotifier
from engine.adapters.postgres import translate_errors
from engine.adapters.store import EventStore, ExecutionRecord, NewEvent, StoredEvent
from engine.core import jsondiff
from engine.core.state import ExecutionState
from engine.errors import ExecutionNotFound, WorkflowNotFound
from engine.service import fold
from projections import executions as view
from projections import history
from projections import stats as stats_view
from projections.status import ProjectionStatus, projection_status

Ping = Callable[[], Awaitable[object]]


class Doorbell(Protocol):
    """Wakes waiters at each append (engine.adapters.notifier.EventNotifier)."""

    @property
    def closing(self) -> bool: ...
    def changed(self) -> asyncio.Event: ...
    def subscribed(self) -> AbstractAsyncContextManager[None]: ...
    async def wait(self, changed: asyncio.Event, seconds: float) -> None: ...
    async def close(self) -> None: ...


def state_document(state: msgspec.Struct) -> dict[str, Any]:
    """An execution state as readers see it (GET .../state, the ops of .../state/diff):
    the state's fields, with ``null`` where a time is not known yet (the state itself
    holds "" there: ``stopped_at`` of a running execution, ``entered_time`` of a
    frame between states). Timestamps are RFC 3339 UTC with milliseconds."""
    doc: dict[str, Any] = msgspec.to_builtins(state)
    _absent_as_null(doc, ("started_at", "stopped_at"))
    for frame in doc.get("frames", {}).values():
        _absent_as_null(frame, ("entered_time",))
    return doc


def _absent_as_null(doc: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if doc.get(key) == "":
            doc[key] = None


class HistoryPage(msgspec.Struct, frozen=True):
    """A page of events by seq; ``more`` when the history goes on past it."""

    events: list[StoredEvent]
    more: bool


class WorkflowStatsResult(msgspec.Struct, frozen=True):
    executions: view.ExecutionSummary
    states: list[stats_view.StateStats]


class Queries:
    """Read access to executions, histories, statistics and readiness."""

    def __init__(
        self,
        store: EventStore,
        pool: asyncpg.Pool,
        redis_ping: Ping,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._pool = pool
        self._redis_ping = redis_ping
        # PostgreSQL's clock (engine.adapters.clock), the one events are stamped by.
        self.now = clock

    # -- executions -----------------------------------------------------------------------

    async def execution(self, namespace: str | None, execution_id: UUID) -> view.ExecutionRow:
        """The execution as of its last committed event: from the read model when it is
        current, by replay when the projection has no row yet or lags behind a running
        execution (so a reader never sees an execution go back to RUNNING after having
        seen it end). `ExecutionNotFound` when there is no such execution in
        ``namespace`` (None: in any namespace, for operator tools only)."""
        await self.require_execution(namespace, execution_id)
        with translate_errors():
            row = await view.get_row(self._pool, execution_id)
        if row is not None and row.status != "RUNNING":
            return row  # an ended row is final
        if row is not None:
            last = await self.last_event(execution_id)
            if last is None or last.seq <= row.last_seq:
                return row
        row = view.fold(await self._store.load(execution_id))
        if row is None:
            raise ExecutionNotFound(f"execution {execution_id} not found")
        return row

    def started_row(
        self, execution_id: UUID, events: Sequence[NewEvent]
    ) -> view.ExecutionRow | None:
        """The row of an execution whose whole history is ``events`` (seq 1, 2, ...),
        as its start has just committed them (`engine.service.Started`): what
        `execution` would read back, folded from them without the reads. None when
        they do not begin with ExecutionStarted."""
        return view.fold(
            _Committed(execution_id, seq, 0, e.type, e.data, e.timestamp)
            for seq, e in enumerate(events, 1)
        )

    async def replayed_execution(
        self, namespace: str | None, execution_id: UUID
    ) -> view.ExecutionRow:
        """The execution's row folded from its events: always current."""
        await self.require_execution(namespace, execution_id)
        row = view.fold(await self._store.load(execution_id))
        if row is None:
            raise ExecutionNotFound(f"execution {execution_id} not found")
        return row

    async def list_executions(
        self,
        namespace: str,
        *,
        limit: int,
        after: tuple[dt.datetime, UUID] | None,
        ascending: bool,
        filters: view.Filters,
    ) -> view.Page:
        """A page of the read model's rows (see `projections.executions.list_rows`)."""
        with translate_errors():
            return await view.list_rows(
                self._pool,
                namespace=namespace,
                limit=limit,
                after=after,
                ascending=ascending,
                filters=filters,
            )

    async def require_execution(self, namespace: str | None, execution_id: UUID) -> ExecutionRecord:
        """The execution's start record; `ExecutionNotFound` when there is none in
        ``namespace`` (None: any). Every read by id starts here: another namespace's
        execution is not found by the same one query (same code path, same timing)."""
        record = await self._store.get_execution(execution_id, namespace)
        if record is None:
            raise ExecutionNotFound(f"execution {execution_id} not found")
        return record

    # -- histories ------------------------------------------------------------------------

    async def history(
        self,
        namespace: str | None,
        execution_id: UUID,
        *,
        limit: int,
        cursor: int | None,
        reverse: bool,
    ) -> HistoryPage:
        """Up to ``limit`` events after seq ``cursor`` (oldest first), or before it
        (newest first with ``reverse``); `ExecutionNotFound` for an unknown execution."""
        await self.require_execution(namespace, execution_id)
        if reverse:
            upto = None if cursor is None else cursor - 1
            events = await self._store.load(
                execution_id, upto_seq=upto, limit=limit + 1, reverse=True
            )
        else:
            events = await self._store.load(execution_id, after_seq=cursor or 0, limit=limit + 1)
        return HistoryPage(events=events[:limit], more=len(events) > limit)

    async def events_after(self, execution_id: UUID, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events with seq > ``after``, by seq (of an execution the
        caller found with `require_execution` first)."""
        return await self._store.load(execution_id, after_seq=after, limit=limit)

    async def last_event(self, execution_id: UUID) -> StoredEvent | None:
        """The last event (of an execution found with `require_execution` first)."""
        events = await self._store.load(execution_id, limit=1, reverse=True)
        return events[0] if events else None

    def export(self, execution_id: UUID, include_data: bool = True) -> AsyncIterator[bytes]:
        """The whole history as JSON Lines, in chunks (see `projections.history`), of an
        execution found with `require_execution` first."""
        return history.history_lines(self._store, execution_id, include_data)

    def event_notifier(self) -> Doorbell:
        """A new append doorbell over the pool (LISTEN on one pooled connection
        while subscribed); its owner closes it."""
        return EventNotifier(self._pool)

    # -- states ---------------------------------------------------------------------------

    async def state_at(
        self, namespace: str | None, execution_id: UUID, seq: int | None = None
    ) -> ExecutionState:
        """The state replayed from events up to ``seq`` (all when None), cache off."""
        await self.require_execution(namespace, execution_id)
        events = await self._store.load(execution_id, upto_seq=seq)
        if not events:
            raise ExecutionNotFound(f"execution {execution_id} not found")
        return fold(execution_id, events)

    async def events_upto(
        self, namespace: str | None, execution_id: UUID, seq: int
    ) -> list[StoredEvent]:
        """Events 1..``seq`` (fewer when the history is shorter); `ExecutionNotFound`
        when there are none."""
        await self.require_execution(namespace, execution_id)
        events = await self._store.load(execution_id, upto_seq=seq)
        if not events:
            raise ExecutionNotFound(f"execution {execution_id} not found")
        return events

    @staticmethod
    def state_patch(
        execution_id: UUID, events: list[StoredEvent], from_seq: int
    ) -> list[jsondiff.Op]:
        """RFC 6902 ops from the state after ``events[:from_seq]`` to the state after
        all of ``events``."""
        before = fold(execution_id, events[:from_seq])
        after = fold(execution_id, events[from_seq:], before)
        return jsondiff.diff(state_document(before), state_document(after))

    # -- statistics -----------------------------------------------------------------------

    async def workflow_stats(
        self,
        namespace: str,
        workflow: str,
        start: dt.datetime,
        end: dt.datetime,
        version: int | None,
    ) -> WorkflowStatsResult:
        """Executions started and states entered in [start, end); `WorkflowNotFound`
        when the workflow (or that version) does not exist."""
        if await self._store.get_workflow(namespace, workflow, version) is None:
            raise WorkflowNotFound(
                f"no workflow {workflow!r}" + (f" version {version}" if version else "")
            )
        with translate_errors():
            summary = await view.summary(self._pool, namespace, workflow, start, end, version)
            states = await stats_view.state_stats(
                self._pool, namespace, workflow, start, end, version
            )
        return WorkflowStatsResult(executions=summary, states=states)

    async def projection_status(self, now: dt.datetime | None = None) -> list[ProjectionStatus]:
        """Each projection's checkpoint and lag behind the log at ``now`` (None: the
        clock's now)."""
        with translate_errors():
            return await projection_status(self._pool, self.now() if now is None else now)

    # -- readiness ------------------------------------------------------------------------

    async def ping_postgres(self) -> None:
        """Return when PostgreSQL answers and accepts writes (`Unavailable` otherwise)."""
        await self._store.ping_writable()

    async def ping_redis(self) -> None:
        """Await the Redis probe the composition root gave (`Bus.ready_probe`: a tiny
        write, so a Redis that answers PING but refuses writes is not ready)."""
        await self._redis_ping()


class _Committed(NamedTuple):
    """An event of a start's commit, as the read side folds a committed one."""

    execution_id: UUID
    seq: int
    position: int  # (not known before it is read back; folding does not use it)
    type: str
    data: bytes
    timestamp: dt.datetime
