"""Group commit: the appends of concurrent callers in one statement.

Every decision of the engine ends in an append with its expected seq; one
transaction per decision is one round trip and one WAL flush each. `GroupCommit`
takes `EventStore.append`'s arguments, queues them, and one flusher task writes
what is queued by `EventStore.append_batch` (one statement for up to
``max_batch`` executions), then the next batch, which grew meanwhile: under load
batches fill by themselves, and a lone caller waits for nothing but its own
statement. Each caller gets exactly what `EventStore.append` would have given it:
its stored events, or its own `ConcurrencyError` (its execution moved on) or
`InvalidRequest`, without failing the other callers of the batch; `Unavailable`
for all of them when PostgreSQL does not answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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

_Waiting = tuple[AppendRequest, "asyncio.Future[list[StoredEvent]]"]


class GroupCommit:
    """`append` as `EventStore.append`, batched with concurrent calls (see the module)."""

    def __init__(self, store: EventStore, max_batch: int = 100) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(
        self,
        execution_id: UUID,
        expected_seq: int,
        events: Sequence[NewEvent],
        set_timers: Sequence[TimerLike] = (),
        cancel_timers: Sequence[str] = (),
    ) -> list[StoredEvent]:
        """`EventStore.append`, in a batch with the appends queued meanwhile."""
        if not events:  # timer changes alone (rare): no seq to check
            return await self.store.append(
                execution_id, expected_seq, events, set_timers, cancel_timers
            )
        done: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        request = AppendRequest(execution_id, expected_seq, events, set_timers, cancel_timers)
        self._queue.append((request, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # A caller cancelled meanwhile cancels its future: left out if not yet written
        # (an append cut short either commits or not, as a cancelled statement does).
        return await done

    def _take(self) -> list[_Waiting]:
        """The next batch: up to ``max_batch`` waiting callers, one per execution (a
        second append of one execution waits for the next batch, in order)."""
        batch: list[_Waiting] = []
        rest: list[_Waiting] = []
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

    async def _flush(self) -> None:
        batch: list[_Waiting] = []
        try:
            # Let the callers made ready together with the first one queue too.
            await asyncio.sleep(0)
            while batch := self._take():
                results: Sequence[list[StoredEvent] | Exception]
                try:
                    results = await self.store.append_batch([request for request, _ in batch])
                except Exception as exc:  # Unavailable (or a bug): every caller gets it
                    results = [exc] * len(batch)
                for (_, done), result in zip(batch, results, strict=True):
                    if done.done():
                        continue
                    if isinstance(result, BaseException):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
                batch = []
        finally:
            self._flusher = None
            # Cancelled itself (the loop is closing): nobody is left without an answer.
            for _, done in [*batch, *self._queue]:
                done.cancel()
            self._queue = []


_StartWaiting = tuple[StartRequest, "asyncio.Future[ExecutionRecord | Exception | None]"]


class StartCommit:
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
        self.store = store
        self.max_batch = max_batch
        self._queue: list[_StartWaiting] = []
        self._flusher: asyncio.Task[None] | None = None
        # The batch being written: its callers' futures, and its statement.
        self._writing: set[asyncio.Future[ExecutionRecord | Exception | None]] = set()
        self._statement: asyncio.Task[Sequence[ExecutionRecord | Exception | None]] | None = None

    async def start(self, request: StartRequest) -> tuple[ExecutionRecord, bool]:
        """`EventStore.start_execution(..., latest_only=True)` of ``request``, in a batch
        with the starts queued meanwhile."""
        done: asyncio.Future[ExecutionRecord | Exception | None]
        done = asyncio.get_running_loop().create_future()
        self._queue.append((request, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        try:
            outcome = await done
        except asyncio.CancelledError:
            if done in self._writing and self._statement is not None:
                self._statement.cancel()
            raise
        if isinstance(outcome, ExecutionRecord):
            return outcome, True
        if outcome is not None:
            raise outcome
        r = request
        return await self.store.start_execution(
            r.namespace, r.workflow, r.version, r.execution_id, r.name, r.input_json,
            r.started, r.then, r.set_timers, latest_only=True,
        )  # fmt: skip

    async def _flush(self) -> None:
        batch: list[_StartWaiting] = []
        try:
            # Let the callers made ready together with the first one queue too.
            await asyncio.sleep(0)
            while self._queue:
                batch = [w for w in self._queue[: self.max_batch] if not w[1].done()]
                self._queue = self._queue[self.max_batch :]
                if not batch:
                    continue
                outcomes: Sequence[ExecutionRecord | Exception | None]
                self._writing = {done for _, done in batch}
                statement = asyncio.create_task(  # noqa: RUF006 (held below, awaited shielded)
                    self.store.start_batch([request for request, _ in batch])
                )
                self._statement = statement
                try:
                    outcomes = await asyncio.shield(statement)
                except Exception as exc:  # Unavailable (or a bug): every caller gets it
                    outcomes = [exc] * len(batch)
                except asyncio.CancelledError:
                    if not statement.cancelled():
                        raise  # (the flusher itself: the loop is closing)
                    # A caller gave up: rolled back; the others start alone.
                    outcomes = [None] * len(batch)
                finally:
                    self._writing, self._statement = set(), None
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if not done.done():
                        done.set_result(outcome)
                batch = []
        finally:
            self._flusher = None
            # Cancelled itself (the loop is closing): nobody is left without an answer.
            for _, done in [*batch, *self._queue]:
                done.cancel()
            self._queue = []
