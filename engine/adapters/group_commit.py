"""Group commit: the appends (and the starts) of concurrent callers in one statement.

Every decision of the engine ends in an append with its expected seq; one
transaction per decision is one round trip and one WAL flush each. `GroupCommit`
takes `EventStore.append`'s arguments, queues them, and one flusher task writes
what is queued by `EventStore.append_batch` (one statement for up to
``max_batch`` executions), then the next batch, which grew meanwhile: under load
batches fill by themselves, and a lone caller waits for nothing but its own
statement. Each caller gets exactly what `EventStore.append` would have given it:
its stored events, or its own `ConcurrencyError` (its execution moved on) or
`InvalidRequest`, without failing the other callers of the batch; `Unavailable`
for all of them when PostgreSQL does not answer. `StartCommit` does the same for
starts (`EventStore.start_batch`). Both queue and flush through `_Batches`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar
from uuid import UUID

from engine.adapters.store import (
    AppendRequest,
    EventStore,
    ExecutionRecord,
    NewEvent,
    StartRequest,
    StoredEvent,
    TimerLike,
)
from engine.errors import SteplogError

Request = TypeVar("Request")
Outcome = TypeVar("Outcome")


class _Batches(ABC, Generic[Request, Outcome]):
    """Requests of concurrent callers, queued and written in batches by one flusher
    task: each batch is what queued while the one before was being written, so under
    load batches fill by themselves and a lone caller waits for nothing but its own
    write. A subclass says how a batch is taken (`_take`) and written (`_write`: an
    outcome per request, an exception being that caller's to raise)."""

    def __init__(self, store: EventStore, max_batch: int = 100) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[tuple[Request, asyncio.Future[Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _ask(self, request: Request) -> Outcome:
        """``request``'s outcome, once the batch it goes in is written. A caller
        cancelled meanwhile cancels its future: left out if not yet written."""
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((request, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await done

    def _take(self) -> list[tuple[Request, asyncio.Future[Outcome]]]:
        """The next batch: up to ``max_batch`` callers still waiting, in order."""
        while self._queue:
            batch = [w for w in self._queue[: self.max_batch] if not w[1].done()]
            self._queue = self._queue[self.max_batch :]
            if batch:
                return batch
        return []

    @abstractmethod
    async def _write(self, requests: list[Request]) -> Sequence[Outcome | Exception]:
        """One statement for ``requests``: an outcome per request, in order."""

    async def _flush(self) -> None:
        batch: list[tuple[Request, asyncio.Future[Outcome]]] = []
        try:
            # Let the callers made ready together with the first one queue too.
            await asyncio.sleep(0)
            while batch := self._take():
                outcomes: Sequence[Outcome | Exception]
                try:
                    outcomes = await self._write([request for request, _ in batch])
                except Exception as exc:  # Unavailable (or a bug): every caller gets it
                    outcomes = [exc] * len(batch)
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue
                    if isinstance(outcome, Exception):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
                batch = []
        finally:
            self._flusher = None
            # Cancelled itself (the loop is closing): nobody is left without an answer.
            for _, done in [*batch, *self._queue]:
                done.cancel()
            self._queue = []


class GroupCommit(_Batches[AppendRequest, list[StoredEvent]]):
    """`append` as `EventStore.append`, batched with concurrent calls (see the module)."""

    async def append(
        self,
        execution_id: UUID,
        expected_seq: int,
        events: Sequence[NewEvent],
        set_timers: Sequence[TimerLike] = (),
        cancel_timers: Sequence[str] = (),
    ) -> list[StoredEvent]:
        """`EventStore.append`, in a batch with the appends queued meanwhile (an append
        cut short either commits or not, as a cancelled statement does)."""
        if not events:  # timer changes alone (rare): no seq to check
            return await self.store.append(
                execution_id, expected_seq, events, set_timers, cancel_timers
            )
        return await self._ask(
            AppendRequest(execution_id, expected_seq, events, set_timers, cancel_timers)
        )

    def _take(self) -> list[tuple[AppendRequest, asyncio.Future[list[StoredEvent]]]]:
        """The next batch: up to ``max_batch`` waiting callers, one per execution (a
        second append of one execution waits for the next batch, in order)."""
        batch: list[tuple[AppendRequest, asyncio.Future[list[StoredEvent]]]] = []
        rest: list[tuple[AppendRequest, asyncio.Future[list[StoredEvent]]]] = []
        seen: set[UUID] = set()
        for waiting in self._queue:
            request, done = waiting
            if done.done():
                continue
            if len(batch) < self.max_batch and request.execution_id not in seen:
                seen.add(request.execution_id)
                batch.append(waiting)
            else:
                rest.append(waiting)
        self._queue = rest
        return batch

    async def _write(
        self, requests: list[AppendRequest]
    ) -> Sequence[list[StoredEvent] | Exception]:
        return await self.store.append_batch(requests)


class StartCommit(_Batches[StartRequest, "ExecutionRecord | None"]):
    """Starts of the latest versions of workflows (`EventStore.start_execution` with
    ``latest_only``) from concurrent callers, the new ones in one statement per batch
    (`EventStore.start_batch`), as `GroupCommit` batches appends: under load, a start
    shares its round trip and its commit with the others asked for meanwhile; a lone
    one waits for nothing but its own statement. A start the batch did not make (its
    name exists, its version is not the latest any more, or the statement failed as a
    whole) is made alone by `start_execution`, which says what became of it: each
    caller gets exactly what that call would have given it.

    A caller cancelled (its request's deadline) while its start is being written
    cancels the batch's statement, as a statement of its own would have been: the
    statement is rolled back, the cancelled start is not made, and the others of the
    batch are each made alone."""

    def __init__(self, store: EventStore, max_batch: int = 100) -> None:
        super().__init__(store, max_batch)
        # The batch being written, and its statement.
        self._writing: list[StartRequest] = []
        self._statement: asyncio.Task[list[ExecutionRecord | SteplogError | None]] | None = None

    async def start(self, request: StartRequest) -> tuple[ExecutionRecord, bool]:
        """`EventStore.start_execution(..., latest_only=True)` of ``request``, in a batch
        with the starts queued meanwhile."""
        try:
            record = await self._ask(request)
        except asyncio.CancelledError:
            if self._statement is not None and any(r is request for r in self._writing):
                self._statement.cancel()
            raise
        if record is not None:
            return record, True
        r = request
        return await self.store.start_execution(
            r.namespace, r.workflow, r.version, r.execution_id, r.name, r.input_json,
            r.started, r.then, r.set_timers, latest_only=True,
        )  # fmt: skip

    async def _write(
        self, requests: list[StartRequest]
    ) -> Sequence[ExecutionRecord | Exception | None]:
        statement = asyncio.create_task(self.store.start_batch(requests))
        self._writing, self._statement = requests, statement
        try:
            return await asyncio.shield(statement)
        except asyncio.CancelledError:
            if not statement.cancelled():
                raise  # (the flusher itself: the loop is closing)
            # A caller gave up: rolled back; the others start alone.
            return [None] * len(requests)
        finally:
            self._writing, self._statement = [], None
