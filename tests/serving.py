"""Run a whole steplog (every role) inside the test process, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from steplog.app import Resources, open_resources, run_roles
from steplog.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running(msgspec.Struct):
    base_url: str
    resources: Resources
    http: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def running_steplog(settings: Settings) -> AsyncIterator[Running]:
    settings = msgspec.structs.replace(settings, port=free_port())
    assert settings.database_url and settings.redis_url
    stop = asyncio.Event()
    ready = asyncio.Event()
    async with open_resources(settings, settings.database_url, settings.redis_url) as r:
        task = asyncio.create_task(run_roles(r, stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        async with aiohttp.ClientSession() as http:
            try:
                yield Running(f"http://{settings.host}:{settings.port}", r, http)
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
