"""The live feed of an execution's events as Server-Sent Events.

GET /v1/executions/{id}/events  (Accept: text/event-stream)
    Each event is one SSE message: ``id`` = its seq, ``event`` = its type,
    ``data`` = the same JSON as a history entry. The feed first sends what
    already happened, then each new event as it commits, and ends after the
    execution's terminal event. A reconnect with ``Last-Event-ID: N`` (or
    ``?after=N``; the header wins) resumes at seq N+1: no gap, no repeat, since
    the feed reads PostgreSQL by seq. A comment line every HEARTBEAT_S keeps
    proxies from closing an idle stream.

Waking: one `EventNotifier` per application LISTENs on the store's channel
(every append NOTIFYs it) on one pooled connection, held only while a feed is
open, and wakes every open feed,
which then loads its execution's events after the last seq it sent. A missed
notification (e.g. while the listener reconnects) costs at most POLL_S of
latency: each feed also polls at that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import msgspec
from aiohttp import web

from api.executions import event_out, execution_id, require_execution
from api.keys import POOL, STORE
from api.problems import InvalidQuery
from api.schemas import EventsFeedQuery, decode_query
from engine.adapters.store import NOTIFY_CHANNEL, EventStore
from engine.core.events import TERMINAL_EVENT_TYPES
from engine.errors import SteplogError

log = logging.getLogger(__name__)

POLL_S = 1.0
HEARTBEAT_S = 15.0
RETRY_MS = 1000
PAGE = 500
EVENT_STREAM = "text/event-stream"

routes = web.RouteTableDef()
_encode = msgspec.json.Encoder().encode


class NotAcceptable(SteplogError):
    code = "not_acceptable"
    status = 406


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
        """Listen while at least one feed is open: no feed, no held connection (so
        the API never keeps a pooled connection it does not need)."""
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
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
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
        """Hold one pooled connection with a listener; reconnect after failures."""
        while not self._closing.is_set():
            try:
                async with self._pool.acquire() as conn:
                    await conn.add_listener(NOTIFY_CHANNEL, self._notify)
                    try:
                        # Wake now and then to notice a connection that died quietly.
                        while not conn.is_closed() and not self._closing.is_set():
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._closing.wait(), POLL_S)
                    finally:
                        if not conn.is_closed():
                            await conn.remove_listener(NOTIFY_CHANNEL, self._notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the feeds fall back to polling meanwhile
                log.warning("event listener lost: %r; reconnecting", exc)
                await asyncio.sleep(POLL_S)


NOTIFIER = web.AppKey("steplog_event_notifier", EventNotifier)


async def notifier_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one notifier per application; open feeds end at shutdown."""
    notifier = EventNotifier(app[POOL])
    app[NOTIFIER] = notifier

    async def on_shutdown(_: web.Application) -> None:
        await notifier.close()

    app.on_shutdown.append(on_shutdown)
    yield
    await notifier.close()


def _accepts_event_stream(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return True
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {EVENT_STREAM, "text/*", "*/*"})


def _resume_after(request: web.Request) -> int:
    query = decode_query(request.query, EventsFeedQuery)
    header = request.headers.get("Last-Event-ID")
    if header is None or not header.strip():
        return query.after or 0
    text = header.strip()
    if not text.isdigit():
        raise InvalidQuery(
            "Last-Event-ID must be a seq this feed sent", [("Last-Event-ID", "not a seq")]
        )
    return int(text)


@routes.get("/v1/executions/{id}/events")
async def event_feed(request: web.Request) -> web.StreamResponse:
    eid = execution_id(request)
    if not _accepts_event_stream(request):
        raise NotAcceptable(f"this route serves {EVENT_STREAM} only")
    after = _resume_after(request)
    store = request.app[STORE]
    await require_execution(store, eid)
    last = await store.load(eid, limit=1, reverse=True)
    # A terminal event is the last one ever: a client resuming past it gets an empty feed.
    ended = bool(last) and last[0].type in TERMINAL_EVENT_TYPES and after >= last[0].seq
    notifier = request.app[NOTIFIER]
    response = web.StreamResponse(
        headers={
            "Content-Type": EVENT_STREAM,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        }
    )
    await response.prepare(request)
    async with notifier.subscribed():
        await _send(response, notifier, store, eid, after, ended)
    return response


async def _send(
    response: web.StreamResponse,
    notifier: EventNotifier,
    store: EventStore,
    eid: UUID,
    after: int,
    ended: bool,
) -> None:
    """Write events after seq ``after`` until the terminal one (or shutdown)."""
    loop = asyncio.get_running_loop()
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        last_write = loop.time()
        while not ended and not notifier.closing:
            changed = notifier.changed()
            events = await store.load(eid, after_seq=after, limit=PAGE)
            if events:
                chunk = bytearray()
                for e in events:
                    data = _encode(event_out(e))
                    chunk += f"id: {e.seq}\nevent: {e.type}\ndata: ".encode() + data + b"\n\n"
                    ended = ended or e.type in TERMINAL_EVENT_TYPES
                await response.write(bytes(chunk))
                after, last_write = events[-1].seq, loop.time()
                continue
            idle = loop.time() - last_write
            if idle >= HEARTBEAT_S:
                await response.write(b": keep-alive\n\n")
                last_write = loop.time()
                continue
            await notifier.wait(changed, min(POLL_S, HEARTBEAT_S - idle))
        await response.write_eof()
    except ConnectionResetError:
        # The client went away: nothing left to send.
        log.debug("event feed of %s closed by the client", eid)
