"""Run a whole steplog (every role) inside the test process, on a free port. With
authentication on in its settings, it makes an admin key its client sends with every call
(the suite's settings turn authentication off: loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from engine.access import Actor
from steplog.app import Resources, open_resources, run_roles
from steplog.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running(msgspec.Struct):
    """A running steplog and an HTTP client for it, with the calls tests repeat."""

    base_url: str
    resources: Resources
    http: aiohttp.ClientSession
    # With settings.auth on: an admin key of settings.namespace, sent with every call.
    key: str | None = None

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON body) of one request; ``body`` is sent as JSON."""
        async with self.http.request(method, self.base_url + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def register(self, name: str, definition: Any) -> None:
        status, body = await self.call("PUT", f"/v1/workflows/{name}", {"definition": definition})
        assert status in (200, 201), body

    async def start(self, workflow: str, input: Any, name: str | None = None) -> tuple[int, Any]:
        payload: dict[str, Any] = {"input": input}
        if name is not None:
            payload["name"] = name
        return await self.call("POST", f"/v1/workflows/{workflow}/executions", payload)

    async def start_id(self, workflow: str, input: Any) -> str:
        """Start an execution that must be created (201); its id."""
        status, body = await self.start(workflow, input)
        assert status == 201, body
        return str(body["execution_id"])

    async def ended(self, eventually: Any, execution_id: str, timeout_s: float = 15) -> Any:
        """The execution once it is no longer RUNNING (polled until the deadline)."""

        async def not_running() -> Any:
            status, body = await self.call("GET", f"/v1/executions/{execution_id}")
            return body if status == 200 and body["status"] != "RUNNING" else None

        return await eventually(not_running, timeout_s=timeout_s)


@contextlib.asynccontextmanager
async def running_steplog(settings: Settings) -> AsyncIterator[Running]:
    settings = msgspec.structs.replace(settings, port=free_port())
    assert settings.database_url and settings.redis_url
    stop = asyncio.Event()
    ready = asyncio.Event()
    async with open_resources(settings, settings.database_url, settings.redis_url) as r:
        key = None
        if settings.auth:
            _, key = await r.access.create_key(
                namespace=settings.namespace,
                role="admin",
                name="tests",
                actor=Actor(key_id=None, namespace=settings.namespace, remote="tests"),
            )
        task = asyncio.create_task(run_roles(r, stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        async with aiohttp.ClientSession(headers=headers) as http:
            try:
                yield Running(f"http://{settings.host}:{settings.port}", r, http, key)
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
