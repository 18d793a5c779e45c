"""A webhook receiver for tests: a real aiohttp endpoint that verifies every request with
the independent `standardwebhooks` package (`serving_receiver`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web
from standardwebhooks.webhooks import Webhook


class Received(msgspec.Struct):
    webhook_id: str
    body: dict[str, Any]


class Receiver:
    """An aiohttp endpoint that verifies every request with standardwebhooks and
    answers with ``plan(webhook_id, count)`` (the status; 200 by default)."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: list[Received] = []
        self.bad: list[str] = []
        self.calls: dict[str, int] = {}
        self.plan: Callable[[str, int], int] = lambda _id, _n: 200
        self.url = ""
        self.delay_s = 0.0  # how long each answer takes
        self.reply: bytes | None = None  # the body of each answer (default: "answer N")
        # Every request as it came (body, lower-cased headers), to verify again later.
        self.requests: list[tuple[bytes, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((raw, headers))
        try:
            body = Webhook(self.secret).verify(raw, headers)
        except Exception as exc:  # any verification failure is a test failure
            self.bad.append(repr(exc))
            return web.Response(status=400)
        webhook_id = headers["webhook-id"]
        count = self.calls[webhook_id] = self.calls.get(webhook_id, 0) + 1
        status = self.plan(webhook_id, count)
        if status == 200:
            self.received.append(Received(webhook_id, body))
        if self.reply is not None:
            return web.Response(status=status, body=self.reply)
        return web.Response(status=status, text=f"answer {count}")


@contextlib.asynccontextmanager
async def serving_receiver() -> AsyncIterator[Receiver]:
    """A Receiver listening on 127.0.0.1 (its ``url``), until the block ends."""
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield r
    finally:
        await runner.cleanup()
