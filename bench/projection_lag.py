"""Benchmark: projection lag while events are appended at a fixed rate (issue #13).

Goal: commit -> read model visible, p99 < 100 ms while 5,000 events/s are appended.

A child process (``serve``, started here) runs steplog's own read path and nothing else:
the relay (`engine.loops.relay.Relay`, PostgreSQL -> Redis streams, woken by the append's
NOTIFY) and the projector role (`projections.runner.projectors`: the executions view and
the state statistics, each following the events streams and reading `read_all` after its
checkpoint). The engine is left out on purpose: its Begin triggers would race the
appender. This process stands in for the engine: it appends, open loop, executions
shaped like a 10-state Pass chain (1 + 21 events, the engine's two appends, through
`EventStore.append` with its NOTIFY) at ``--rate`` events/s: execution ``i`` is appended
at ``i * 22 / rate`` seconds whatever the earlier ones are doing.

Lag of an append: from its commit being acknowledged (the append returned) to the first
moment a poll of ``projection_checkpoints`` (every ``--poll-ms``, one connection) shows
the projection's checkpoint at or past the append's last event. The checkpoint is
written in the transaction that writes the read-model rows, so the rows are visible
then. The relay's recorded checkpoint is followed the same way ("relay": published to
Redis and recorded), to show how much of the lag is the relay's. Printed per projection: p50, p99, max (after ``--warmup`` seconds), with the rate
achieved and the load average.

    .venv/bin/python bench/projection_lag.py [--rate 5000] [--seconds 20]
    .venv/bin/python bench/projection_lag.py --database-url postgresql://... --redis-url redis://...

Without URLs it starts embedded PostgreSQL (fsync on) and Redis (AOF) under a temporary
folder, as `steplog dev` does. Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import goal  # bench/goal.py

from engine.adapters.postgres import open_pool
from engine.adapters.store import EventStore, GlobalPosition, NewEvent
from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory
from projections.runner import PROJECTIONS
from steplog.migrate import migrate

PREFIX = "bench-lag"
PASS_10 = {
    "StartAt": "S0",
    "States": {
        f"S{i}": ({"Type": "Pass", "Next": f"S{i + 1}"} if i < 9 else {"Type": "Pass", "End": True})
        for i in range(10)
    },
}
# Where each projection has applied up to, and (for where the lag goes) up to where the relay
# has published and recorded it.
CHECKPOINTS = """
SELECT name, tx_id::text, position FROM projection_checkpoints
UNION ALL SELECT 'relay', tx_id::text, position FROM relay_checkpoint WHERE name = 'relay'"""


def execution_events() -> list[tuple[str, bytes]]:
    """(type, data) of a 10-state Pass chain as the engine's core records it (22 events)."""
    doc = {"orderId": "order-1", "customer": {"id": 1, "name": "Ada Lovelace"}}
    run = run_in_memory(compile_definition(PASS_10), doc, workflow="lag")
    return [(ev.event_type(e), ev.encode_event(e)) for e in run.events]


# -- the child: relay + projectors ------------------------------------------------------


async def serve(database_url: str, redis_url: str) -> None:
    """Run the relay and every projector until SIGTERM."""
    import redis.asyncio as aioredis

    from engine.adapters.bus import Bus
    from engine.adapters.clock import DbClock
    from engine.loops.relay import Relay
    from projections.runner import projectors

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pool = await open_pool(database_url, min_size=2, max_size=10)
    redis = aioredis.from_url(redis_url)
    try:
        clock = DbClock(pool)
        await clock.sample()
        store = EventStore(pool)
        bus = Bus(redis, PREFIX, 4)
        loops = [Relay(store, bus, pool, clock=clock.now).run(stop)]
        loops += [p.run(stop) for p in projectors(pool, store, bus)]
        await asyncio.gather(*loops)
    finally:
        await redis.aclose()
        await pool.close()


# -- the appender and the poller --------------------------------------------------------


class Lags:
    """Appends waiting to be seen, and the lags of those seen, per projection."""

    def __init__(self, names: list[str], warmup_until: float) -> None:
        self.waiting: dict[str, list[tuple[float, GlobalPosition]]] = {n: [] for n in names}
        self.seen: dict[str, list[float]] = {n: [] for n in names}
        self.warmup_until = warmup_until

    def committed(self, at: float, last: GlobalPosition) -> None:
        if at >= self.warmup_until:
            for waiting in self.waiting.values():
                waiting.append((at, last))

    def observe(self, name: str, checkpoint: GlobalPosition, at: float) -> None:
        key = (checkpoint.tx_id, checkpoint.position)
        still = []
        for committed_at, last in self.waiting[name]:
            if (last.tx_id, last.position) <= key:
                self.seen[name].append(at - committed_at)
            else:
                still.append((committed_at, last))
        self.waiting[name] = still

    def pending(self) -> int:
        return sum(len(w) for w in self.waiting.values())


async def measure(
    database_url: str, rate: float, seconds: float, warmup: float, poll_ms: float
) -> tuple[Lags, float, int]:
    """(lags, events/s appended, executions) of one run against the running child."""
    events = execution_events()
    per_execution = len(events)
    pool = await open_pool(database_url, min_size=4, max_size=16)
    try:
        store = EventStore(pool)
        loop = asyncio.get_running_loop()
        # The child is ready once both projections show a first execution.
        eid, now = uuid.uuid4(), datetime.now(UTC)
        first = await store.append(eid, 0, [NewEvent(t, d, now) for t, d in events])
        target = first[-1].global_position
        deadline = loop.time() + 60
        while (
            not all(
                (int(r[1]), r[2]) >= (target.tx_id, target.position)
                for r in await pool.fetch(CHECKPOINTS)
            )
            or len(await pool.fetch(CHECKPOINTS)) < len(PROJECTIONS) + 1
        ):
            if loop.time() > deadline:
                raise SystemExit("the relay and projectors did not start within 60 s")
            await asyncio.sleep(0.05)
        began = loop.time()
        # A projection's checkpoint row appears with its first applied batch.
        lags = Lags(["relay", *PROJECTIONS], began + warmup)
        appending = True

        async def execution() -> None:
            eid = uuid.uuid4()
            now = datetime.now(UTC)
            first = [NewEvent(events[0][0], events[0][1], now)]
            stored = await store.append(eid, 0, first)
            lags.committed(loop.time(), stored[-1].global_position)
            rest = [NewEvent(t, d, now) for t, d in events[1:]]
            stored = await store.append(eid, 1, rest)
            lags.committed(loop.time(), stored[-1].global_position)

        async def poll() -> None:
            async with pool.acquire() as conn:
                while appending or lags.pending():
                    rows = await conn.fetch(CHECKPOINTS)
                    at = loop.time()
                    for r in rows:
                        if r["name"] in lags.waiting:
                            lags.observe(r["name"], GlobalPosition(int(r[1]), r[2]), at)
                    await asyncio.sleep(poll_ms / 1000)

        poller = asyncio.create_task(poll())
        total = int(rate * seconds / per_execution)
        tasks = []
        for i in range(total):
            due = began + i * per_execution / rate
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(execution()))
        await asyncio.gather(*tasks)
        achieved = total * per_execution / (loop.time() - began)
        appending = False
        await asyncio.wait_for(poller, 120)
        return lags, achieved, total
    finally:
        await pool.close()


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(lags: Lags, rate: float, achieved: float, executions: int, goal_ms: float) -> None:
    print(
        f"projection lag: {executions} executions x 22 events offered at {rate:,.0f} events/s "
        f"(open loop), {achieved:,.0f} events/s appended"
    )
    worst = 0.0
    for name, samples in lags.seen.items():
        p99 = _pct(samples, 0.99)
        if name != "relay":
            worst = max(worst, p99)
        print(
            f"  {name:<12} commit -> visible over {len(samples)} appends: "
            f"p50 {statistics.median(samples) * 1000:.1f} ms  p99 {p99:.1f} ms  "
            f"max {max(samples) * 1000:.1f} ms"
        )
    print(f"projection lag p99 (worst projection): {worst:.1f} ms (goal < {goal_ms:.0f} ms)")
    goal.report(
        f"projection lag p99 at {achieved:,.0f} events/s",
        f"{worst:.1f} ms",
        f"< {goal_ms:.0f} ms",
        worst < goal_ms and achieved >= 0.95 * rate,
    )


@contextlib.asynccontextmanager
async def servers(
    database_url: str | None, redis_url: str | None
) -> AsyncIterator[tuple[str, str]]:
    if database_url and redis_url:
        yield database_url, redis_url
        return
    from steplog.embedded import embedded_servers

    with tempfile.TemporaryDirectory(prefix="steplog-lag-") as folder:
        async with embedded_servers(Path(folder)) as urls:
            yield urls


async def main(args: argparse.Namespace) -> None:
    async with servers(args.database_url, args.redis_url) as (database_url, redis_url):
        pool = await open_pool(database_url, min_size=1, max_size=1)
        try:
            await migrate(pool)
        finally:
            await pool.close()
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "serve", "--database-url", database_url,
            "--redis-url", redis_url,
        )  # fmt: skip
        try:
            lags, achieved, n = await measure(
                database_url, args.rate, args.seconds, args.warmup, args.poll_ms
            )
        finally:
            child.terminate()
            await asyncio.wait_for(child.wait(), 60)
    report(lags, args.rate, achieved, n, 100)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        p = argparse.ArgumentParser()
        p.add_argument("serve")
        p.add_argument("--database-url", required=True)
        p.add_argument("--redis-url", required=True)
        a = p.parse_args()
        asyncio.run(serve(a.database_url, a.redis_url))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=20, help="how long to append")
    parser.add_argument("--warmup", type=float, default=2, help="seconds not counted")
    parser.add_argument("--poll-ms", type=float, default=2, help="checkpoint poll interval")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    asyncio.run(main(parser.parse_args()))
