"""AsyncClient.events resumes a feed whose connection drops before the terminal event,
from the last seq it received (Last-Event-ID), with no event missed or repeated. The
drop is staged by a stand-in SSE server (steplog's own feed never ends early but at its
shutdown); the feed's format is steplog's (api/feed.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from steplog.client import AsyncClient
from tests.serving import free_port

TYPES = ["ExecutionStarted", "PassStateEntered", "PassStateExited", "ExecutionSucceeded"]


def _event(seq: int) -> bytes:
    data = {"seq": seq, "type": TYPES[seq - 1], "timestamp": "2026-01-01T00:00:00.000Z"}
    data["details"] = {"note": "x" * 100_000} if seq == 2 else {}  # one long line
    return f"id: {seq}\nevent: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


@pytest.fixture
async def feed() -> AsyncIterator[tuple[str, list[str]]]:
    asked: list[str] = []

    async def events(request: web.Request) -> web.StreamResponse:
        after = int(request.headers.get("Last-Event-ID", "0"))
        asked.append(request.headers.get("Last-Event-ID", ""))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n: keep-alive\n\n")
        # The first connection drops after seq 2 (with half of seq 3 sent).
        last = 2 if after == 0 else len(TYPES)
        for seq in range(after + 1, last + 1):
            await response.write(_event(seq))
        if after == 0:
            await response.write(_event(3)[:20])
        await response.write_eof()
        return response

    async def newest(request: web.Request) -> web.Response:
        # What the client reads when a feed ends without a terminal event: has it ended?
        last = {"seq": 4, "type": TYPES[3], "timestamp": "2026-01-01T00:00:00.000Z"}
        return web.json_response({"events": [{**last, "details": {}}], "next_cursor": None})

    app = web.Application()
    app.router.add_get("/v1/executions/{id}/events", events)
    app.router.add_get("/v1/executions/{id}/history", newest)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        await runner.cleanup()


async def test_a_dropped_feed_is_resumed_after_the_last_seq(
    feed: tuple[str, list[str]],
) -> None:
    url, asked = feed
    async with AsyncClient(url, backoff_s=0.01) as client:
        seen = [e async for e in client.events("e1")]
    assert [e.seq for e in seen] == [1, 2, 3, 4]
    assert [e.type for e in seen] == TYPES
    assert len(seen[1].details["note"]) == 100_000
    assert asked == ["0", "2"]
