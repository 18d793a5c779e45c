"""The timer service through a refused write (issue 14 item 2, the timers' lease).

A timer service that fired a timer and cannot record it (PostgreSQL read-only for a
while, sessions re-established) keeps trying within its claim's lease instead of
letting the lease run out: with two services running, a timer fires once through an
outage shorter than the lease.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore, TimerSpec
from engine.loops.timers import TimerService
from tests.conftest import Eventually, Servers
from tests.integration.test_relay_outage import Database
from tests.integration.test_timers import event, fired, start

LEASE_S = 4.0
READ_ONLY_S = 2.0  # shorter than the lease


class ReadOnlyAfterPublish(Bus):
    """The real bus; after its first publish, PostgreSQL turns read-only for a while."""

    def __init__(self, bus: Bus, database: Database) -> None:
        super().__init__(bus.redis, prefix=bus.keys.prefix, partitions=bus.partitions)
        self.database = database
        self.outage: asyncio.Task[None] | None = None

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        await super().publish(*args, **kwargs)
        if self.outage is None:
            await self.database.read_only(True)
            self.outage = asyncio.create_task(self._end_later())

    async def _end_later(self) -> None:
        await asyncio.sleep(READ_ONLY_S)
        await self.database.read_only(False)


async def test_a_timer_fired_during_a_short_outage_fires_once(
    servers: Servers,
    database_url: str,
    store: EventStore,
    bus: Bus,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    eventually: Eventually,
) -> None:
    execution_id = await start(store)
    await store.append(
        execution_id,
        1,
        [event()],
        set_timers=[TimerSpec("t", datetime.now(UTC) - timedelta(seconds=1))],
    )
    faulty = ReadOnlyAfterPublish(bus, Database(servers.database_url, database_url))
    services = [
        TimerService(store, faulty, lease_s=LEASE_S, poll_interval_s=0.1, retry_delay_s=0.2),
        TimerService(store, bus, lease_s=LEASE_S, poll_interval_s=0.1, retry_delay_s=0.2),
    ]
    stop = asyncio.Event()
    # The faulty one first, so that it is the one that fires.
    tasks = [asyncio.create_task(services[0].run(stop))]
    try:

        async def outage_began() -> bool:
            return faulty.outage is not None

        await eventually(outage_began)
        tasks.append(asyncio.create_task(services[1].run(stop)))
        assert faulty.outage is not None
        await faulty.outage

        async def recorded() -> bool:
            try:
                return bool(
                    await pool.fetchval(
                        "SELECT fired_due IS NOT NULL FROM timers WHERE timer_id = 't'"
                    )
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                return False

        await eventually(recorded, timeout_s=LEASE_S * 2)
        # Past the lease: a service that had given up recording would fire it again now.
        await asyncio.sleep(LEASE_S)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert await fired(redis, bus) == ["t"]
