"""The live feed of an execution's events as Server-Sent Events.

GET /v1/executions/{id}/events  (Accept: text/event-stream)
    Each event is one SSE message: ``id`` = its seq, ``event`` = its type,
    ``data`` = the same JSON as a history entry. The feed first sends what
    already happened, then each new event as it commits, and ends after the
    execution's terminal event. A reconnect with ``Last-Event-ID: N`` (or
    ``?after=N``; the header wins) resumes at seq N+1: no gap, no repeat, since
    the feed reads PostgreSQL by seq. A comment line every HEARTBEAT_S keeps
    proxies from closing an idle stream.

Waking: one doorbell per application (`Queries.event_notifier`: a LISTEN on
the store's channel, which every append NOTIFYs, on one pooled connection held
only while a feed is open) wakes every open feed, which then loads its
execution's events after the last seq it sent. A missed notification (e.g. while the listener reconnects) costs at most POLL_S of
latency: each feed also polls at that bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from uuid import UUID

import msgspec
from aiohttp import web

from api.auth import namespace_of
from api.keys import QUERIES
from api.params import execution_id
from api.problems import InvalidQuery
from api.schemas import DB_INT_MAX, EventsFeedQuery, decode_query
from api.views import event_out
from engine.core.events import TERMINAL_EVENT_TYPES, CommittedEvent
from engine.errors import SteplogError, Unavailable
from projections.queries import Doorbell, Queries

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


NOTIFIER: web.AppKey[Doorbell] = web.AppKey("steplog_event_notifier")


async def notifier_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one notifier per application; open feeds end at shutdown."""
    notifier = app[QUERIES].event_notifier()
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
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= DB_INT_MAX):
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
    queries = request.app[QUERIES]
    await queries.require_execution(namespace_of(request), eid)
    last = await queries.last_event(eid)
    # A terminal event is the last one ever: a client resuming past it gets an empty feed.
    ended = last is not None and last.type in TERMINAL_EVENT_TYPES and after >= last.seq
    # The first page is read before the 200 goes out, so that any error of the request
    # (or of the database) is still a problem+json response, never a status line
    # inside a stream already begun.
    first: Sequence[CommittedEvent] = [] if ended else await queries.events_after(eid, after, PAGE)
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
        await _send(response, notifier, queries, eid, after, ended, first)
    return response


async def _send(
    response: web.StreamResponse,
    notifier: Doorbell,
    queries: Queries,
    eid: UUID,
    after: int,
    ended: bool,
    first: Sequence[CommittedEvent],
) -> None:
    """Write ``first``, then the events after it until the terminal one (or shutdown).
    The headers are out: an error from here on ends the stream (the client resumes
    with Last-Event-ID) instead of becoming a response."""
    loop = asyncio.get_running_loop()
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        last_write = loop.time()
        pending: Sequence[CommittedEvent] | None = first
        while not ended and not notifier.closing:
            changed = notifier.changed()
            events = (
                pending if pending is not None else await queries.events_after(eid, after, PAGE)
            )
            pending = None
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
    except Unavailable as exc:
        log.warning("event feed of %s ended: %r", eid, exc.__cause__ or exc)
    except Exception:
        log.exception("event feed of %s ended by an error", eid)
