"""Outages of PostgreSQL and Redis as the API sees them (issue 14 items 1 and 4): a
read-only PostgreSQL, every connection terminated, a table lock held past the
timeouts, a Redis out of memory, its clients killed, its writes paused. Each time
starts, registers, stops and reads answer 503 problem+json with Retry-After, never 500;
/health/ready says not ready while PostgreSQL refuses writes or Redis refuses
commands; everything works again afterwards.

These faults change server-wide state, so this module runs its own embedded PostgreSQL
and Redis (the suite's shared servers are never touched), and every fault is undone in
a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.adapters.postgres import translate_errors
from engine.adapters.store import EventStore
from engine.errors import Unavailable
from engine.loops.engine_loop import Engine
from engine.messages import ENGINE_GROUP, Begin
from engine.service import EngineService
from steplog.embedded import embedded_servers
from steplog.settings import Settings
from tests.serving import Running, running_steplog

WAITING = {
    "StartAt": "Hold",
    "States": {"Hold": {"Type": "Wait", "Seconds": 600, "End": True}},
}
API_STATEMENT_TIMEOUT_MS = 1000
REQUEST_TIMEOUT_S = 3.0


class Servers(msgspec.Struct, frozen=True):
    database_url: str
    redis_url: str


@pytest.fixture(scope="module")
async def own_servers() -> AsyncIterator[Servers]:
    """PostgreSQL and Redis for this module alone (their data folder outside tmp_path)."""
    folder = Path(tempfile.mkdtemp(prefix="steplog-o-"))
    try:
        async with embedded_servers(folder, durable=False) as (db_url, redis_url):
            yield Servers(db_url, redis_url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def admin(own_servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection that stays writable whatever the server's defaults."""
    conn = await asyncpg.connect(
        own_servers.database_url, server_settings={"default_transaction_read_only": "off"}
    )
    yield conn
    await conn.close()


@pytest.fixture
async def redis_admin(own_servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_servers.redis_url)
    yield client
    await client.aclose()


def outage_settings(servers: Servers, tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": servers.database_url,
        "redis_url": servers.redis_url,
        "redis_prefix": f"o{uuid.uuid4().hex[:8]}",
        "data_dir": tmp_path,
        "auth": True,  # the key lookups are on the path too
        # The API beside a loop role: the API's facades get their own pool, with the
        # API's statement timeout. (The engine's relay is tested under these faults by
        # the chaos suite.)
        "roles": ("api", "projector"),
        "api_statement_timeout_ms": API_STATEMENT_TIMEOUT_MS,
        "request_timeout_s": REQUEST_TIMEOUT_S,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
async def steplog(own_servers: Servers, tmp_path: Path) -> AsyncIterator[Running]:
    async with running_steplog(outage_settings(own_servers, tmp_path)) as s:
        await s.register("hold", WAITING)
        yield s


class Reply(msgspec.Struct):
    status: int
    body: Any
    retry_after: str | None
    seconds: float


async def call(s: Running, method: str, path: str, body: Any = None) -> Reply:
    started = time.monotonic()
    async with s.http.request(method, s.base_url + path, json=body) as resp:
        payload = await resp.json(content_type=None)
        return Reply(
            resp.status, payload, resp.headers.get("Retry-After"), time.monotonic() - started
        )


async def every_route(s: Running, running_id: str) -> dict[str, Reply]:
    """One call of each kind: register, start, stop, reads."""
    return {
        "register": await call(
            s, "PUT", f"/v1/workflows/w{uuid.uuid4().hex[:6]}", {"definition": WAITING}
        ),
        "start": await call(
            s, "POST", "/v1/workflows/hold/executions", {"input": {}, "name": uuid.uuid4().hex}
        ),
        "stop": await call(s, "POST", f"/v1/executions/{running_id}/stop", {}),
        "describe": await call(s, "GET", f"/v1/executions/{running_id}"),
        "history": await call(s, "GET", f"/v1/executions/{running_id}/history"),
        "listing": await call(s, "GET", "/v1/executions?limit=5"),
    }


def assert_unavailable(reply: Reply, what: str) -> None:
    assert reply.status == 503, (what, reply)
    assert reply.retry_after == "1", (what, reply)
    assert reply.body["code"] == "service_unavailable", (what, reply)


async def ready(s: Running) -> Reply:
    return await call(s, "GET", "/health/ready")


async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def recovered(s: Running) -> None:
    """Ready again, and a start, a stop and the reads all succeed."""

    async def is_ready() -> bool:
        return (await ready(s)).status == 200

    await until(is_ready)
    status, started = await s.start("hold", {}, name=uuid.uuid4().hex)
    assert status == 201, started
    replies = await every_route(s, started["execution_id"])
    assert {k: r.status for k, r in replies.items()} == {
        "register": 201,
        "start": 201,
        "stop": 200,
        "describe": 200,
        "history": 200,
        "listing": 200,
    }


async def start_running(s: Running) -> str:
    status, body = await s.start("hold", {}, name=uuid.uuid4().hex)
    assert status == 201, body
    return str(body["execution_id"])


async def terminate_others(admin: asyncpg.Connection) -> int:
    """Terminate every client backend but ``admin``'s own; how many."""
    return int(
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    )


@contextlib.asynccontextmanager
async def read_only(admin: asyncpg.Connection) -> AsyncIterator[None]:
    """PostgreSQL as after a failover to a replica: every new transaction read-only,
    the sessions re-established."""
    await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    await admin.execute("SELECT pg_reload_conf()")
    try:
        await terminate_others(admin)
        yield
    finally:
        await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await admin.execute("SELECT pg_reload_conf()")


# -- PostgreSQL -----------------------------------------------------------------------


async def test_read_only_postgres_refuses_writes_with_503_and_is_not_ready(
    steplog: Running, admin: asyncpg.Connection
) -> None:
    running = await start_running(steplog)
    async with read_only(admin):

        async def says_read_only() -> bool:
            # (The first probes may meet a connection the server terminated.)
            probe = await ready(steplog)
            return probe.status == 503 and "read-only" in probe.body["checks"]["postgres"]

        await until(says_read_only)
        replies = await every_route(steplog, running)
        probe = await ready(steplog)
    for what in ("register", "start", "stop"):
        assert_unavailable(replies[what], what)
    # Reads need no write: a read-only PostgreSQL still serves them.
    for what in ("describe", "history", "listing"):
        assert replies[what].status == 200, (what, replies[what])
    assert probe.retry_after == "1"
    assert probe.body["checks"]["postgres"].startswith(
        "error: Unavailable: PostgreSQL is read-only"
    )
    assert probe.body["checks"]["redis"] == "ok"
    await recovered(steplog)
    status, body = await steplog.call("GET", f"/v1/executions/{running}")
    assert (status, body["status"]) == (200, "RUNNING")  # the refused stop changed nothing


async def test_terminated_connections_under_load_are_never_a_500(
    steplog: Running, admin: asyncpg.Connection
) -> None:
    running = await start_running(steplog)
    statuses: list[int] = []
    unavailable: list[Reply] = []
    done = asyncio.Event()

    async def load() -> None:
        while not done.is_set():
            for reply in (await every_route(steplog, running)).values():
                statuses.append(reply.status)
                if reply.status == 503:
                    unavailable.append(reply)

    async def killer() -> int:
        killed = 0
        for _ in range(15):
            killed += await terminate_others(admin)
            await asyncio.sleep(0.1)
        done.set()
        return killed

    loads = [asyncio.create_task(load()) for _ in range(4)]
    killed = await killer()
    await asyncio.gather(*loads)

    assert killed > 0
    assert statuses and 500 not in statuses, sorted(set(statuses))
    # What is not a success is an outage the client may retry: 503 with Retry-After.
    assert set(statuses) <= {200, 201, 503}, sorted(set(statuses))
    for reply in unavailable:
        assert_unavailable(reply, "under terminations")
    await recovered(steplog)


@contextlib.asynccontextmanager
async def table_locked(own_servers: Servers, table: str) -> AsyncIterator[None]:
    """``table`` locked ACCESS EXCLUSIVE by another session until the block ends."""
    conn = await asyncpg.connect(own_servers.database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def test_a_table_lock_held_past_the_statement_timeout_is_a_prompt_503(
    steplog: Running, own_servers: Servers
) -> None:
    running = await start_running(steplog)
    async with table_locked(own_servers, "events"):
        start = await call(
            steplog, "POST", "/v1/workflows/hold/executions", {"input": {}, "name": "locked"}
        )
        history = await call(steplog, "GET", f"/v1/executions/{running}/history")
        stop = await call(steplog, "POST", f"/v1/executions/{running}/stop", {})
    for what, reply in (("start", start), ("history", history), ("stop", stop)):
        assert_unavailable(reply, what)
        # The statement timeout (1 s) answers, well before the request deadline (3 s).
        assert reply.seconds < REQUEST_TIMEOUT_S, (what, reply)
    await recovered(steplog)
    # The start cut short committed nothing: the same name starts it now.
    again = await call(
        steplog, "POST", "/v1/workflows/hold/executions", {"input": {}, "name": "locked"}
    )
    assert again.status == 201, again


async def test_an_export_cut_short_by_an_outage_is_an_incomplete_body(
    steplog: Running, own_servers: Servers
) -> None:
    running = await start_running(steplog)
    url = f"{steplog.base_url}/v1/executions/{running}/history.jsonl"
    async with table_locked(own_servers, "events"):
        # The execution is found (executions table), the 200 goes out, then the events
        # cannot be read: the client must not take a short body for the whole history.
        async with steplog.http.get(url) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    async with steplog.http.get(url) as resp:
        assert resp.status == 200
        lines = (await resp.read()).splitlines()
    assert len(lines) >= 1 and b"ExecutionStarted" in lines[0]


async def test_without_statement_timeout_the_request_deadline_answers_503(
    own_servers: Servers, tmp_path: Path
) -> None:
    settings = outage_settings(own_servers, tmp_path, api_statement_timeout_ms=0)
    async with running_steplog(settings) as s:
        await s.register("hold", WAITING)
        running = await start_running(s)
        async with table_locked(own_servers, "events"):
            start = await call(
                s, "POST", "/v1/workflows/hold/executions", {"input": {}, "name": "deadline"}
            )
            history = await call(s, "GET", f"/v1/executions/{running}/history")
        for what, reply in (("start", start), ("history", history)):
            assert_unavailable(reply, what)
            assert reply.body["detail"] == (
                f"the request did not finish within {REQUEST_TIMEOUT_S:g} s; retry later"
            )
            assert REQUEST_TIMEOUT_S <= reply.seconds < REQUEST_TIMEOUT_S + 2, (what, reply)
        # The cancelled start's transaction was rolled back: the name is still free.
        status, body = await s.start("hold", {}, name="deadline")
        assert status == 201, body
        status, body = await s.call("GET", f"/v1/executions/{running}/history")
        assert status == 200 and len(body["events"]) >= 1


async def test_store_translates_refusals_of_a_writable_server(
    own_servers: Servers, admin: asyncpg.Connection
) -> None:
    """The SQLSTATEs of "not now" reach the store as Unavailable: a read-only
    transaction (25006), a statement timeout (57014), a lock timeout (55P03)."""
    pool = await asyncpg.create_pool(
        own_servers.database_url,
        min_size=1,
        max_size=2,
        server_settings={"default_transaction_read_only": "on"},
    )
    try:
        with pytest.raises(Unavailable) as read_only_error:
            await EventStore(pool).rearm_timers()  # an UPDATE
        assert isinstance(read_only_error.value.__cause__, asyncpg.ReadOnlySQLTransactionError)
    finally:
        await pool.close()
    conn = await asyncpg.connect(own_servers.database_url)
    try:
        await conn.execute("SET statement_timeout = 50")
        with pytest.raises(Unavailable) as timeout_error:
            with translate_errors():
                await conn.execute("SELECT pg_sleep(2)")
        assert isinstance(timeout_error.value.__cause__, asyncpg.QueryCanceledError)
        await conn.execute("SET statement_timeout = 0; SET lock_timeout = 50")
        await admin.execute("BEGIN; LOCK TABLE timers IN ACCESS EXCLUSIVE MODE")
        try:
            with pytest.raises(Unavailable) as lock_error:
                with translate_errors():
                    await conn.execute("SELECT count(*) FROM timers")
        finally:
            await admin.execute("ROLLBACK")
        assert isinstance(lock_error.value.__cause__, asyncpg.LockNotAvailableError)
    finally:
        await conn.close()


async def test_an_engine_claims_nothing_while_postgres_is_read_only(
    own_servers: Servers, redis_admin: aioredis.Redis
) -> None:
    """Claiming another engine's stale triggers counts their deliveries towards the
    dead-letter limit: not while no engine could record them (read-only), else a long
    failover would fail executions once it is over."""
    pool = await asyncpg.create_pool(
        own_servers.database_url,
        min_size=1,
        max_size=2,
        server_settings={"default_transaction_read_only": "on"},
    )
    client = aioredis.Redis.from_url(own_servers.redis_url)
    bus = Bus(client, prefix=f"o{uuid.uuid4().hex[:8]}", partitions=1)
    try:
        await bus.ensure_group(bus.triggers_stream(0), ENGINE_GROUP)
        await bus.add_trigger(uuid.uuid4(), Begin())
        # Read by an engine that then went away: pending on "gone".
        assert len(await bus.read_triggers(ENGINE_GROUP, "gone", bus.triggers_streams(), 10)) == 1
        engine = Engine(
            EngineService(EventStore(pool)), bus, consumer="other", visibility_timeout_s=0.001
        )
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="read-only"):
            await engine.claim_stale()
        pending = await client.xpending(bus.triggers_stream(0), ENGINE_GROUP)
        assert pending["pending"] == 1
        assert pending["consumers"] == [{"name": b"gone", "pending": 1}]  # not claimed
    finally:
        await client.aclose()
        await pool.close()


# -- Redis ----------------------------------------------------------------------------


async def test_redis_out_of_memory_refuses_writes_with_503_and_is_not_ready(
    steplog: Running, redis_admin: aioredis.Redis
) -> None:
    running = await start_running(steplog)
    await redis_admin.config_set("maxmemory-policy", "noeviction")
    await redis_admin.config_set("maxmemory", "1")
    try:
        replies = await every_route(steplog, running)

        async def refused() -> bool:
            return (await ready(steplog)).status == 503

        await until(refused)
        probe = await ready(steplog)
    finally:
        await redis_admin.config_set("maxmemory", "0")
    # Writes take a rate-limit token (a Redis write): refused, fail closed. Reads pass.
    for what in ("register", "start", "stop"):
        assert_unavailable(replies[what], what)
    for what in ("describe", "history", "listing"):
        assert replies[what].status == 200, (what, replies[what])
    assert probe.status == 503
    assert probe.retry_after == "1"
    assert probe.body["checks"]["redis"] == (
        "error: Unavailable: Redis is unavailable: command not allowed when used memory > "
        "'maxmemory'."
    )
    assert probe.body["checks"]["postgres"] == "ok"
    await recovered(steplog)


async def test_redis_clients_killed_under_load_are_never_a_500(
    steplog: Running, redis_admin: aioredis.Redis
) -> None:
    running = await start_running(steplog)
    statuses: list[int] = []
    unavailable: list[Reply] = []
    done = asyncio.Event()

    async def load() -> None:
        while not done.is_set():
            for reply in (await every_route(steplog, running)).values():
                statuses.append(reply.status)
                if reply.status == 503:
                    unavailable.append(reply)

    loads = [asyncio.create_task(load()) for _ in range(4)]
    killed = 0
    try:
        for _ in range(15):
            killed += int(await redis_admin.client_kill_filter(_type="normal", skipme=True))
            await asyncio.sleep(0.1)
    finally:
        done.set()
        await asyncio.gather(*loads)

    assert killed > 0
    assert statuses and 500 not in statuses, sorted(set(statuses))
    assert set(statuses) <= {200, 201, 503}, sorted(set(statuses))
    for reply in unavailable:
        assert_unavailable(reply, "under client kills")
    await recovered(steplog)


async def test_redis_writes_paused_answer_503_in_time_and_are_not_ready(
    steplog: Running, redis_admin: aioredis.Redis
) -> None:
    running = await start_running(steplog)
    pause_ms = int((REQUEST_TIMEOUT_S + 2) * 1000)
    await redis_admin.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
    try:
        start = await call(
            steplog, "POST", "/v1/workflows/hold/executions", {"input": {}, "name": "paused"}
        )
        read = await call(steplog, "GET", f"/v1/executions/{running}")
        probe = await ready(steplog)
    finally:
        await redis_admin.execute_command("CLIENT", "UNPAUSE")
    assert_unavailable(start, "start")
    assert start.seconds < REQUEST_TIMEOUT_S + 1, start
    # The rate limiter's script may write, so it waits too: reads pass without their
    # token after TAKE_TIMEOUT_S (fail open), starts are refused (fail closed).
    assert read.status == 200, read
    assert probe.status == 503, probe
    assert probe.body["checks"]["redis"].startswith("error: TimeoutError"), probe
    await recovered(steplog)


async def test_ready_probes_are_shared_between_callers(steplog: Running) -> None:
    """Many callers at once: all answered, by a handful of probe runs."""
    async with aiohttp.ClientSession() as anonymous:

        async def probe() -> int:
            async with anonymous.get(steplog.base_url + "/health/ready") as resp:
                return resp.status

        statuses = await asyncio.gather(*(probe() for _ in range(50)))
    assert statuses == [200] * 50


async def test_bus_translates_a_replica_a_busy_script_and_a_stale_replica(
    redis_admin: aioredis.Redis, own_servers: Servers
) -> None:
    """READONLY (a replica refusing writes), MASTERDOWN (a replica refusing stale reads)
    and BUSY (a script running past lua-time-limit) are Unavailable, the Redis
    error chained; the readiness probe says so too."""
    client = aioredis.Redis.from_url(own_servers.redis_url)
    bus = Bus(client, prefix=f"o{uuid.uuid4().hex[:8]}", partitions=1)
    try:
        await redis_admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody there
        try:
            with pytest.raises(Unavailable) as readonly:
                await bus.add_trigger(uuid.uuid4(), Begin())
            with pytest.raises(Unavailable):
                await bus.ready_probe()
            await redis_admin.config_set("replica-serve-stale-data", "no")
            with pytest.raises(Unavailable) as masterdown:
                await bus.is_intact()
        finally:
            await redis_admin.config_set("replica-serve-stale-data", "yes")
            await redis_admin.execute_command("REPLICAOF", "NO", "ONE")
        assert "read only replica" in str(readonly.value.__cause__)
        assert "Link with MASTER is down" in str(masterdown.value.__cause__)
        await bus.add_trigger(uuid.uuid4(), Begin())  # a primary again

        await redis_admin.config_set("lua-time-limit", "50")
        spinner = aioredis.Redis.from_url(own_servers.redis_url)
        spin = asyncio.create_task(
            spinner.eval("local i = 0 while true do i = i + 1 end", 0)  # type: ignore[misc]
        )
        try:
            await asyncio.sleep(0.3)
            with pytest.raises(Unavailable) as busy:
                await bus.add_trigger(uuid.uuid4(), Begin())
        finally:
            await redis_admin.script_kill()
            with contextlib.suppress(Exception):
                await spin  # "Script killed by user"
            await spinner.aclose()
            await redis_admin.config_set("lua-time-limit", "5000")
        assert "busy running a script" in str(busy.value.__cause__)
        await bus.add_trigger(uuid.uuid4(), Begin())
    finally:
        await client.aclose()
