"""The relay through PostgreSQL outages (issue 14 item 2), with two relays running.

PostgreSQL refusing the checkpoint write for 10 s (read-only, with every session
re-established, as after a failover) or dropping every connection again and again must
not make the relays hand the same batch back and forth: each event reaches its events
stream at most twice (docs/internals.md, "Relay": once by the leader before the outage,
once more by the next leader if the outage outlasts the lease), and every event at least
once. The counts are printed (``pytest -s``) for the issue's before/after figures.

Read-only is set per database (ALTER DATABASE ... SET default_transaction_read_only)
rather than with ALTER SYSTEM, so that the fault stays inside this test's database even
on a server shared with other tests; terminating the database's backends makes every
session reconnect under it, as a failover does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import asyncpg
import msgspec
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore, GlobalPosition, NewEvent
from engine.errors import Unavailable
from engine.loops.relay import Relay
from tests.conftest import Eventually, Servers
from tests.integration.test_relay import T0

OUTAGE_S = 10.0
EXECUTIONS = 20


def event(type_: str = "PassStateEntered") -> NewEvent:
    return NewEvent(type_, msgspec.json.encode({"type": type_}), T0)


async def deliveries(redis: aioredis.Redis, bus: Bus) -> Counter[tuple[UUID, int]]:
    """How many times each (execution_id, seq) reached the events streams."""
    seen: Counter[tuple[UUID, int]] = Counter()
    for stream in bus.events_streams():
        for _, fields in await redis.xrange(stream):
            seen[(UUID(fields[b"execution_id"].decode()), int(fields[b"seq"]))] += 1
    return seen


class Database:
    """Faults of one test database, made from an admin connection to another one."""

    def __init__(self, admin_url: str, database_url: str) -> None:
        self.admin_url = admin_url
        self.name = urlsplit(database_url).path.lstrip("/")

    async def admin(self, sql: str, *args: object) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def terminate_sessions(self) -> None:
        await self.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )

    async def read_only(self, on: bool) -> None:
        """Turn read-only on or off for new sessions, then re-establish every session."""
        if on:
            await self.admin(f'ALTER DATABASE "{self.name}" SET default_transaction_read_only = on')
        else:
            await self.admin(f'ALTER DATABASE "{self.name}" RESET default_transaction_read_only')
        await self.terminate_sessions()


@contextlib.asynccontextmanager
async def relays(*relays: Relay) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)


def two_relays(store: EventStore, bus: Bus, pool: asyncpg.Pool) -> tuple[Relay, Relay]:
    return (
        Relay(store, bus, pool, poll_interval_s=0.5, retry_delay_s=0.5, lease_s=3.0),
        Relay(store, bus, pool, poll_interval_s=0.5, retry_delay_s=0.5, lease_s=3.0),
    )


async def start(store: EventStore) -> UUID:
    record, _ = await store.start_execution(
        "default", "wf", 1, uuid4(), f"e-{uuid4()}", b"{}", event("ExecutionStarted")
    )
    return record.execution_id


async def caught_up(pool: asyncpg.Pool, store: EventStore) -> bool:
    """The relay checkpoint is at the last event (PostgreSQL answering again)."""
    try:
        row = await pool.fetchrow("SELECT tx_id, position FROM relay_checkpoint")
        events = await store.read_all(GlobalPosition(), 100_000)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, Unavailable):
        return False
    return row is not None and GlobalPosition(row["tx_id"], row["position"]) == (
        events[-1].global_position
    )


def report(what: str, seen: Counter[tuple[UUID, int]]) -> None:
    times = Counter(seen.values())
    print(
        f"\n{what}: {len(seen)} events, {sum(seen.values())} stream entries, "
        f"max {max(seen.values())} per event; events by times delivered: {dict(sorted(times.items()))}"
    )


async def test_read_only_postgres_republishes_a_batch_at_most_once(
    servers: Servers,
    database_url: str,
    store: EventStore,
    bus: Bus,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    eventually: Eventually,
) -> None:
    database = Database(servers.database_url, database_url)
    executions = [await start(store) for _ in range(EXECUTIONS)]
    async with relays(*two_relays(store, bus, pool)):
        await eventually(lambda: caught_up(pool, store))
        # A transaction in flight holds the next events back from the relay (read_all
        # never passes an open transaction), so the relay publishes them only once the
        # failover below has ended it: published while the checkpoint write is refused.
        holder = await asyncpg.connect(database_url)
        await holder.execute("BEGIN")
        await holder.fetchval("SELECT pg_current_xact_id()")
        for execution_id in executions:
            await store.append(execution_id, 1, [event(), event()])
        expected = {(x, seq) for x in executions for seq in (1, 2, 3)}
        try:
            await database.read_only(True)
            loop = asyncio.get_running_loop()
            ends = loop.time() + OUTAGE_S

            async def all_published() -> bool:
                return set(await deliveries(redis, bus)) == expected

            await eventually(all_published, timeout_s=OUTAGE_S)
            await asyncio.sleep(ends - loop.time())  # the rest of the outage
            during = await deliveries(redis, bus)
        finally:
            await database.read_only(False)
            with contextlib.suppress(Exception):
                await holder.close()
        await eventually(lambda: caught_up(pool, store), timeout_s=15)
        # Still relaying after the outage.
        await store.append(executions[0], 3, [event("ExecutionSucceeded")])
        expected.add((executions[0], 4))

        async def all_delivered() -> bool:
            return set(await deliveries(redis, bus)) == expected

        await eventually(all_delivered)
        await eventually(lambda: caught_up(pool, store))
    seen = await deliveries(redis, bus)
    report(f"during {OUTAGE_S:.0f} s read-only", during)
    report("after recovery", seen)
    assert set(seen) == expected
    assert max(seen.values()) <= 2


async def test_dropped_connections_republish_nothing_twice(
    servers: Servers,
    database_url: str,
    store: EventStore,
    bus: Bus,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    eventually: Eventually,
) -> None:
    """Every session terminated every 0.3 s for 6 s while executions keep appending."""
    database = Database(servers.database_url, database_url)
    expected: set[tuple[UUID, int]] = set()
    stop = asyncio.Event()

    async def write() -> None:
        while not stop.is_set():
            try:
                execution_id = await start(store)
                expected.add((execution_id, 1))
                await store.append(execution_id, 1, [event()])
                expected.add((execution_id, 2))
            except Exception:  # any refusal of a dropped session (issue 14 item 1)
                await asyncio.sleep(0.05)

    async with relays(*two_relays(store, bus, pool)):
        writer = asyncio.create_task(write())
        loop = asyncio.get_running_loop()
        ends = loop.time() + 6.0
        try:
            while loop.time() < ends:
                await asyncio.sleep(0.3)
                await database.terminate_sessions()
        finally:
            stop.set()
            await writer
        # An append whose commit reply was lost is in the database but not in `expected`.
        committed = {
            (e.execution_id, e.seq) for e in await store.read_all(GlobalPosition(), 100_000)
        }
        assert expected <= committed

        async def all_delivered() -> bool:
            return set(await deliveries(redis, bus)) == committed

        await eventually(all_delivered, timeout_s=15)
        await eventually(lambda: caught_up(pool, store), timeout_s=15)
    seen = await deliveries(redis, bus)
    report("sessions terminated every 0.3 s for 6 s", seen)
    assert len(committed) > 20  # the writer made progress between the faults
    assert set(seen) == committed
    assert max(seen.values()) <= 2


async def test_a_cut_off_leader_is_replaced_after_its_lease_only(
    servers: Servers,
    database_url: str,
    store: EventStore,
    bus: Bus,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    eventually: Eventually,
) -> None:
    """The leader alone loses PostgreSQL (its sessions dropped, its role refused new
    ones; PostgreSQL fine for everyone else): it stops publishing when its lease runs
    out, the standby takes the lead only after that, and an event is published at most
    twice."""
    lease_s = 2.0
    role = f"cut_{secrets.token_hex(4)}"
    database = Database(servers.database_url, database_url)
    await database.admin(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    cut_url = urlunsplit(urlsplit(database_url)._replace(netloc=f"{role}@"))
    cut_pool = await asyncpg.create_pool(cut_url, min_size=1, max_size=4)
    cut = Relay(EventStore(cut_pool), bus, cut_pool, poll_interval_s=0.2, lease_s=lease_s)
    standby = Relay(store, bus, pool, poll_interval_s=0.2, lease_s=lease_s)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(cut.run(stop))]
    try:

        async def cut_leads() -> bool:
            return cut.is_leader

        await eventually(cut_leads)
        tasks.append(asyncio.create_task(standby.run(stop)))
        executions = [await start(store) for _ in range(5)]

        async def published_once() -> bool:
            return len(await deliveries(redis, bus)) == len(executions)

        await eventually(published_once)
        loop = asyncio.get_running_loop()
        cut_at = loop.time()
        await database.admin(f'ALTER ROLE "{role}" NOLOGIN')
        await database.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )

        async def standby_leads() -> bool:
            return standby.is_leader

        await eventually(standby_leads, timeout_s=lease_s * 5)
        took_over_after = loop.time() - cut_at
        assert not cut.is_leader  # its lease ran out before the standby took the lead
        for execution_id in executions:
            await store.append(execution_id, 1, [event()])

        async def all_delivered() -> bool:
            return len(await deliveries(redis, bus)) >= 2 * len(executions)

        await eventually(all_delivered)
        await eventually(lambda: caught_up(pool, store))
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
        cut_pool.terminate()
        await database.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await database.admin(f'DROP ROLE "{role}"')
    seen = await deliveries(redis, bus)
    report(f"leader cut off, the standby led after {took_over_after:.1f} s", seen)
    assert took_over_after >= lease_s * 0.9  # not at once: the lease ran out first
    assert len(seen) == 2 * len(executions)
    assert max(seen.values()) <= 2
