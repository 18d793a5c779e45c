"""Statement timeouts and the request deadline (issue 14 item 4) on the suite's shared
servers: each pool carries its role's statement timeout, migrations run without one,
the deadline waits while a body arrives and is lifted for a stream. (A deadline or a
statement timeout that answers 503 under a held lock: tests/api/test_outages.py.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import msgspec
import pytest

from engine.adapters.postgres import open_pool, translate_errors
from engine.errors import Unavailable
from steplog.app import open_resources
from steplog.migrate import migrate
from steplog.settings import Settings
from tests.serving import Running, running_steplog


async def statement_timeout(pool: asyncpg.Pool) -> str:
    return str(await pool.fetchval("SHOW statement_timeout"))


def test_timeout_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "STEPLOG_REQUEST_TIMEOUT_S": "4.5",
            "STEPLOG_API_STATEMENT_TIMEOUT_MS": "2500",
            "STEPLOG_STATEMENT_TIMEOUT_MS": "0",
            "STEPLOG_REDIS_TIMEOUT_S": "3",
        }
    )
    assert (
        settings.request_timeout_s,
        settings.api_statement_timeout_ms,
        settings.statement_timeout_ms,
        settings.redis_timeout_s,
    ) == (4.5, 2500, 0, 3.0)
    defaults = Settings()
    assert (
        defaults.request_timeout_s,
        defaults.api_statement_timeout_ms,
        defaults.statement_timeout_ms,
        defaults.redis_timeout_s,
    ) == (10.0, 5000, 30000, 10.0)
    for bad in (
        {"STEPLOG_REQUEST_TIMEOUT_S": "0"},
        {"STEPLOG_API_STATEMENT_TIMEOUT_MS": "-1"},
        {"STEPLOG_STATEMENT_TIMEOUT_MS": "soon"},
        {"STEPLOG_REDIS_TIMEOUT_S": "1"},  # below the 1 s the consumers block
    ):
        with pytest.raises(ValueError, match=r"STEPLOG|timeout"):
            Settings.from_env(bad)


async def test_each_role_gets_its_statement_timeout(settings: Settings) -> None:
    url, redis_url = settings.database_url, settings.redis_url
    assert url and redis_url
    # Every role in one process: the loops' pool, and the API's own beside it.
    async with open_resources(settings, url, redis_url, pool_size=2) as r:
        assert await statement_timeout(r.pool) == "30s"
        assert await statement_timeout(r.api.pool) == "5s"
        assert r.api.pool is not r.pool
    # The API alone: one pool, the API's.
    api_only = msgspec.structs.replace(settings, roles=("api",), api_statement_timeout_ms=1500)
    async with open_resources(api_only, url, redis_url, pool_size=2) as r:
        assert await statement_timeout(r.pool) == "1500ms"
        assert r.api.pool is r.pool
    # The CLI (no API) and loops alone: one pool, the loops'.
    async with open_resources(settings, url, redis_url, pool_size=2, serving_api=False) as r:
        assert await statement_timeout(r.pool) == "30s"
        assert r.api.pool is r.pool


async def test_migrations_run_without_the_statement_timeout(empty_database_url: str) -> None:
    pool = await open_pool(empty_database_url, min_size=1, max_size=1, statement_timeout_ms=1)
    try:
        applied = await migrate(pool)  # many statements far longer than 1 ms
        assert applied and applied[0].startswith("0001_")
        # The connection went back to the pool with its 1 ms timeout again.
        assert await statement_timeout(pool) == "1ms"
        with pytest.raises(Unavailable) as cut:
            with translate_errors():
                await pool.execute("SELECT pg_sleep(0.2)")
        assert isinstance(cut.value.__cause__, asyncpg.QueryCanceledError)
    finally:
        await pool.close()


async def _raw_request(app: Running, head: bytes, body: bytes, pause_s: float) -> bytes:
    """Send ``head``, wait ``pause_s``, send ``body``; the whole answer."""
    host, port = app.base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(pause_s)
        writer.write(body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_the_deadline_waits_while_the_body_arrives(settings: Settings) -> None:
    quick = msgspec.structs.replace(settings, request_timeout_s=0.5, http_body_timeout_s=5.0)
    async with running_steplog(quick) as app:
        body = msgspec.json.encode(
            {"definition": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}}
        )
        head = (
            b"PUT /v1/workflows/slow-body HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        answer = await _raw_request(app, head, body, pause_s=1.0)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]


WAIT_A_SECOND = {
    "StartAt": "Hold",
    "States": {"Hold": {"Type": "Wait", "Seconds": 1, "Next": "Done"}, "Done": {"Type": "Succeed"}},
}


async def test_a_stream_is_not_cut_by_the_deadline(settings: Settings) -> None:
    quick = msgspec.structs.replace(settings, request_timeout_s=0.3)
    async with running_steplog(quick) as app:
        await app.register("hold", WAIT_A_SECOND)
        execution_id = await app.start_id("hold", {})
        url = f"{app.base_url}/v1/executions/{execution_id}/events"
        started = time.monotonic()
        events: list[str] = []
        async with app.http.get(url, headers={"Accept": "text/event-stream"}) as resp:
            assert resp.status == 200
            async for line in resp.content:  # until the server ends the stream
                text = line.decode().strip()
                if text.startswith("event:"):
                    events.append(text.removeprefix("event:").strip())
        elapsed = time.monotonic() - started
    assert events[0] == "ExecutionStarted" and events[-1] == "ExecutionSucceeded", events
    assert elapsed > 0.9  # three times the deadline, streaming all along


async def test_a_request_past_its_deadline_is_a_503_and_the_server_goes_on(
    settings: Settings, eventually: Any
) -> None:
    """A lock held by another session on the table a read needs, with no statement
    timeout: the deadline answers."""
    quick = msgspec.structs.replace(settings, request_timeout_s=0.5, api_statement_timeout_ms=0)
    async with running_steplog(quick) as app:
        await app.register("hold", WAIT_A_SECOND)
        execution_id = await app.start_id("hold", {})
        locker = await asyncpg.connect(settings.database_url)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                async with app.http.get(
                    f"{app.base_url}/v1/executions/{execution_id}/history"
                ) as resp:
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
                    body = await resp.json(content_type=None)
                elapsed = time.monotonic() - started
        finally:
            await locker.close()
        assert (status, retry_after, body["code"]) == (503, "1", "service_unavailable")
        assert body["detail"] == "the request did not finish within 0.5 s; retry later"
        assert 0.5 <= elapsed < 2.0
        ended = await app.ended(eventually, execution_id)
        assert ended["status"] == "SUCCEEDED"
