"""Benchmark: replay of one 10,000-event execution against a bare fetch + decode (issue #13).

Writes one execution of ``--events`` (default 10,000) events into a fresh database: the
first events of a looping Task/Pass/Choice workflow run by the engine's own core
(`engine.core.inmemory.run_in_memory`, so the rows hold exactly what the engine records),
appended through `EventStore.append` in decisions of ``--chunk`` events, as the engine
appends them. Then, in alternating rounds in the same run:

- **replay**: `EngineService.state_at` (the engine's replay path with the cache off:
  `EventStore.load_for_fold` through the pool, each event's data and time, then
  `fold_data`: decode and `evolve_all`, the payloads decoded only where the state keeps
  them);
- **ceiling**: a bare asyncpg ``fetch`` of the same rows (the store's own statement, on a
  connection held open) and ``msgspec`` decoding of each row's data into the event union
  (the decoder the engine uses); no fold.

Prints the medians in ms, where the replay's time goes (load vs fold) and the ratio
replay / ceiling (the goal: <= 1.3).

    .venv/bin/python bench/replay.py [--events 10000] [--rounds 15]
    .venv/bin/python bench/replay.py --database-url postgresql://...   # a running server

Without a URL it starts an embedded PostgreSQL (fsync on) under a temporary folder.
Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import goal  # bench/goal.py

from engine.adapters.postgres import open_pool
from engine.adapters.store import LOAD_FORWARD, EventStore, NewEvent
from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory
from engine.service import EngineService, fold_data
from steplog.migrate import migrate

# A loop through the common state kinds: a Task, a Pass that counts, a Choice.
LOOP: dict[str, Any] = {
    "StartAt": "Work",
    "States": {
        "Work": {
            "Type": "Task",
            "Resource": "test:echo",
            "Parameters": {"order.$": "$.order", "i.$": "$.i"},
            "ResultPath": "$.last",
            "Next": "Count",
        },
        "Count": {
            "Type": "Pass",
            "Parameters": {
                "order.$": "$.order",
                "last.$": "$.last",
                "i.$": "States.MathAdd($.i, 1)",
            },
            "Next": "More",
        },
        "More": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.i", "NumericLessThan": 1_000_000, "Next": "Work"}],
            "Default": "Done",
        },
        "Done": {"Type": "Succeed"},
    },
}
ORDER = {
    "orderId": "order-1",
    "customer": {"id": 1, "name": "Ada Lovelace", "tier": "gold"},
    "items": [{"sku": f"sku-{k}", "qty": k + 1} for k in range(3)],
}


def history(count: int) -> list[NewEvent]:
    """The first ``count`` events the engine's core records for the loop, one ms apart."""
    definition = compile_definition(LOOP)
    run = run_in_memory(definition, {"order": ORDER, "i": 0}, max_steps=count)
    assert len(run.events) >= count, len(run.events)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        NewEvent(ev.event_type(e), ev.encode_event(e), t0 + timedelta(milliseconds=k))
        for k, e in enumerate(run.events[:count])
    ]


async def write(
    store: EventStore, execution_id: uuid.UUID, events: list[NewEvent], chunk: int
) -> None:
    await store.append(execution_id, 0, events[:1])
    for start in range(1, len(events), chunk):
        await store.append(execution_id, start, events[start : start + chunk])


async def ceiling(conn: asyncpg.Connection, execution_id: uuid.UUID) -> int:
    """Fetch every row (the store's statement) and decode each event: no fold."""
    rows = await conn.fetch(LOAD_FORWARD, execution_id, 0, 2**31 - 1, None)
    decode = ev.decode_event
    for row in rows:
        decode(row["data"])
    return len(rows)


def _ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def run(url: str, count: int, chunk: int, rounds: int) -> dict[str, float]:
    pool = await open_pool(url, min_size=2, max_size=4)
    try:
        await migrate(pool)
        store = EventStore(pool)
        service = EngineService(store)
        eid = uuid.uuid4()
        await write(store, eid, history(count), chunk)
        await pool.execute("ANALYZE events")
        times: dict[str, list[float]] = {"replay": [], "ceiling": [], "load": [], "fold": []}
        async with pool.acquire() as conn:
            # Warm both paths (plans, caches) before timing.
            assert await ceiling(conn, eid) == count
            state = await service.state_at(eid)
            assert state.seq == count, state.seq
            for r in range(rounds):
                for which in ("replay", "ceiling") if r % 2 == 0 else ("ceiling", "replay"):
                    t = time.perf_counter()
                    if which == "replay":
                        await service.state_at(eid)
                    else:
                        await ceiling(conn, eid)
                    times[which].append(time.perf_counter() - t)
                # Where the replay's time goes: the store's load, then the fold.
                t = time.perf_counter()
                data, stamps = await store.load_for_fold(eid)
                t1 = time.perf_counter()
                fold_data(eid, data, stamps)
                times["load"].append(t1 - t)
                times["fold"].append(time.perf_counter() - t1)
        return {name: _ms(v) for name, v in times.items()}
    finally:
        await pool.close()


def report(count: int, rounds: int, ms: dict[str, float]) -> float:
    ratio = ms["replay"] / ms["ceiling"]
    print(f"replay of one {count:,}-event execution, medians of {rounds} alternating rounds")
    print(f"  ceiling: bare fetch + decode        {ms['ceiling']:8.1f} ms")
    print(f"  replay: EngineService.state_at      {ms['replay']:8.1f} ms")
    print(f"    of which EventStore.load_for_fold  {ms['load']:8.1f} ms")
    print(f"    of which fold_data (decode, fold)  {ms['fold']:8.1f} ms")
    print(f"ratio replay / fetch + decode ceiling: {ratio:.2f} (goal <= 1.3)")
    goal.report(
        f"replay of {count:,} events / fetch + decode", f"{ratio:.2f}", "<= 1.3", ratio <= 1.3
    )
    return ratio


@contextlib.asynccontextmanager
async def database(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    from steplog.embedded import embedded_servers

    with tempfile.TemporaryDirectory(prefix="steplog-bench-") as folder:
        async with embedded_servers(Path(folder)) as (db_url, _redis_url):
            yield db_url


async def main(args: argparse.Namespace) -> None:
    async with database(args.database_url) as url:
        report(args.events, args.rounds, await run(url, args.events, args.chunk, args.rounds))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events of the execution")
    parser.add_argument("--chunk", type=int, default=100, help="events per append")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL of your own")
    asyncio.run(main(parser.parse_args()))
