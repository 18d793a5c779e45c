"""The append doorbell: LISTEN on the store's channel (every append NOTIFYs it).

One `EventNotifier` holds one pooled connection with a listener, only while at
least one waiter is subscribed, and wakes every waiter at each append. A lost
connection is reconnected after POLL_S; meanwhile waiters wake at the bound they
pass to `wait`, so a missed notification costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from engine.adapters.postgres import listen
from engine.adapters.store import NOTIFY_CHANNEL
from engine.stopping import cancel_and_wait

POLL_S = 1.0


class EventNotifier:
    """Wakes waiters whenever an event is appended anywhere (LISTEN steplog_events)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribers = 0

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def changed(self) -> asyncio.Event:
        """An event set at the next append: take it *before* reading, then wait on it,
        so an append between the read and the wait is not missed."""
        return self._changed

    def _notify(self, *_: object) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @contextlib.asynccontextmanager
    async def subscribed(self) -> AsyncIterator[None]:
        """Listen while at least one waiter is subscribed: none, no held connection (so
        the owner never keeps a pooled connection it does not need)."""
        self._subscribers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen())
        try:
            yield
        finally:
            self._subscribers -= 1
            if self._subscribers == 0:
                await self._stop_listening()

    async def _stop_listening(self) -> None:
        task, self._task = self._task, None
        if task is not None:  # (a loop that reconnects after failures: see cancel_and_wait)
            await cancel_and_wait([task])

    async def close(self) -> None:
        """Wake every waiter for good (`closing` turns true) and stop listening."""
        self._closing.set()
        self._notify()
        await self._stop_listening()

    async def wait(self, changed: asyncio.Event, seconds: float) -> None:
        """Until ``changed`` is set, the notifier closes, or ``seconds`` pass."""
        closing = asyncio.create_task(self._closing.wait())
        woken = asyncio.create_task(changed.wait())
        try:
            await asyncio.wait((closing, woken), timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            closing.cancel()
            woken.cancel()

    async def _listen(self) -> None:
        """Hold one pooled connection with a listener; reconnect after failures (waiters
        fall back to polling meanwhile)."""
        await listen(
            self._pool,
            NOTIFY_CHANNEL,
            lambda _: self._notify(),
            self._closing,
            poll_s=POLL_S,
            what="event listener",
        )
