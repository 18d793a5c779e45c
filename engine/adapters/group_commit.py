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

from engine.adapters.store import AppendRequest, EventStore, NewEvent, StoredEvent, TimerLike

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
