"""Benchmark: the read side over a large executions_view, and projection rebuilds.

1. COPYs N (default 1,000,000) synthetic executions into executions_view of a
   fresh database (50 workflows, 3 versions, the five statuses, starts spread
   over 30 days) and ANALYZEs it; then times each listing query shape through
   `projections.executions.list_rows` (the code the API runs), REPEAT times with
   varying parameters: p50/p99 in ms, and the ratio of each p50 to the baseline
   measured in the same run (a primary-key lookup of one row).
2. Inserts E (default 1,000,000) events (10 per execution: a start, four Pass
   states, a success) and times `rebuild` of each projection in events/s, with
   the ratio to the baseline (a bare `read_all` scan of the same events).

Uses STEPLOG_DATABASE_URL's server when set, else an embedded PostgreSQL under a
temporary folder; either way in a database of its own, dropped at the end.

    .venv/bin/python bench/read_side.py [-n 1000000] [-e 1000000] [--repeat 200]

Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.adapters.store import EventStore, GlobalPosition
from projections import executions as view
from projections.runner import rebuild
from steplog.embedded import embedded_servers
from steplog.migrate import migrate

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SPAN = dt.timedelta(days=30)
WORKFLOWS = [f"wf{i:02d}" for i in range(50)]
STATUSES = (
    ["SUCCEEDED"] * 80 + ["FAILED"] * 10 + ["RUNNING"] * 5 + ["ABORTED"] * 3 + ["TIMED_OUT"] * 2
)
COLUMNS = (
    "execution_id", "namespace", "workflow", "version", "name", "status", "input",
    "output", "error", "cause", "started_at", "stopped_at", "last_seq",
)  # fmt: skip


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _rows(start: int, count: int, rng: random.Random) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(start, start + count):
        status = rng.choice(STATUSES)
        started = T0 + dt.timedelta(seconds=rng.random() * SPAN.total_seconds())
        stopped = (
            None if status == "RUNNING" else started + dt.timedelta(seconds=rng.expovariate(0.1))
        )
        rows.append(
            (
                uuid.UUID(int=rng.getrandbits(128), version=4), "default", rng.choice(WORKFLOWS),
                rng.randint(1, 3), f"order-{i:07d}", status, "{}", None, None, None,
                started, stopped, 5,
            )
        )  # fmt: skip
    return rows


async def load_executions(pool: asyncpg.Pool, n: int) -> float:
    rng = random.Random(7)
    t = time.perf_counter()
    async with pool.acquire() as conn:
        for start in range(0, n, 50_000):
            rows = _rows(start, min(50_000, n - start), rng)
            await conn.copy_records_to_table("executions_view", records=rows, columns=COLUMNS)
        await conn.execute("ANALYZE executions_view")
    return time.perf_counter() - t


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(repeat: int, query: Callable[[random.Random], Awaitable[Any]]) -> list[float]:
    rng = random.Random(11)
    await query(rng)  # warm the plan and the cache
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        await query(rng)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def bench_listing(pool: asyncpg.Pool, repeat: int) -> None:
    ids = [r[0] for r in await pool.fetch("SELECT execution_id FROM executions_view LIMIT 1000")]
    n = await pool.fetchval("SELECT count(*) FROM executions_view")
    deep = await pool.fetchrow(
        "SELECT started_at, execution_id FROM executions_view"
        " ORDER BY started_at DESC, execution_id OFFSET $1 LIMIT 1",
        n // 2,
    )

    def page(**kw: Any) -> Callable[[random.Random], Awaitable[Any]]:
        async def run(rng: random.Random) -> Any:
            args = {k: (v(rng) if callable(v) else v) for k, v in kw.items()}
            after = args.pop("after", None)
            ascending = args.pop("ascending", False)
            return await view.list_rows(
                pool, namespace="default", limit=100, after=after, ascending=ascending,
                filters=view.Filters(**args),
            )  # fmt: skip

        return run

    def hour(rng: random.Random) -> dt.datetime:
        return T0 + dt.timedelta(hours=rng.randrange(24 * 29))

    shapes: dict[str, Callable[[random.Random], Awaitable[Any]]] = {
        "baseline: primary-key lookup": lambda rng: view.get_row(pool, rng.choice(ids)),
        "newest first, no filter": page(),
        "oldest first, no filter": page(ascending=True),
        "workflow + status": page(
            workflow=lambda r: r.choice(WORKFLOWS),
            status=lambda r: r.choice(["FAILED", "SUCCEEDED"]),
        ),
        "workflow + version": page(workflow=lambda r: r.choice(WORKFLOWS), version=2),
        "workflow + rare status": page(workflow=lambda r: r.choice(WORKFLOWS), status="TIMED_OUT"),
        "name prefix (~100 matches)": page(
            name_prefix=lambda r: f"order-{r.randrange(10_000):05d}"
        ),
        "prefix, 0 or 10k matches, asc": page(
            name_prefix=lambda r: f"order-{r.randrange(1000):03d}", ascending=True
        ),
        "deep cursor (row n/2)": page(after=(deep[0], deep[1])),
        "deep cursor, oldest first": page(after=(deep[0], deep[1]), ascending=True),
    }

    def in_hour(column: str, workflow: bool) -> Callable[[random.Random], Awaitable[Any]]:
        async def run(rng: random.Random) -> Any:
            start = hour(rng)
            bounds = {f"{column}_after": start, f"{column}_before": start + dt.timedelta(hours=1)}
            return await view.list_rows(
                pool, namespace="default", limit=100, after=None,
                filters=view.Filters(workflow=rng.choice(WORKFLOWS) if workflow else None, **bounds),
            )  # fmt: skip

        return run

    shapes["started in a 1 h range"] = in_hour("started", False)
    shapes["workflow + started in 1 h"] = in_hour("started", True)
    shapes["stopped in a 1 h range"] = in_hour("stopped", False)
    print(f"\nlisting over {n:,} executions (limit 100, {repeat} runs each)")
    print(f"{'query':<32} {'p50 ms':>8} {'p99 ms':>8} {'p50 / baseline':>15}")
    base = None
    for name, query in shapes.items():
        samples = await timed(repeat, query)
        p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
        base = base or p50
        print(f"{name:<32} {p50:>8.3f} {p99:>8.3f} {p50 / base:>14.1f}x")


INSERT_EVENTS = """
INSERT INTO events (execution_id, seq, type, data, recorded_at)
SELECT x.id, s.seq,
  CASE WHEN s.seq = 1 THEN 'ExecutionStarted' WHEN s.seq = 10 THEN 'ExecutionSucceeded'
       WHEN s.seq % 2 = 0 THEN 'PassStateEntered' ELSE 'PassStateExited' END,
  CASE WHEN s.seq = 1 THEN jsonb_build_object('type', 'ExecutionStarted', 'input',
            jsonb_build_object('i', x.i), 'workflow', 'wf' || (x.i % 50), 'version', 1,
            'name', 'order-' || x.i)
       WHEN s.seq = 10 THEN jsonb_build_object('type', 'ExecutionSucceeded', 'output',
            jsonb_build_object('i', x.i))
       WHEN s.seq % 2 = 0 THEN jsonb_build_object('type', 'PassStateEntered',
            'name', 'S' || (s.seq / 2), 'input', jsonb_build_object('i', x.i))
       ELSE jsonb_build_object('type', 'PassStateExited', 'name', 'S' || (s.seq / 2),
            'output', jsonb_build_object('i', x.i)) END,
  x.t + s.seq * interval '10 milliseconds'
FROM (SELECT gen_random_uuid() AS id, i, timestamptz '2026-01-01' + i * interval '1 second' AS t
      FROM generate_series($1::int, $2::int) i) x
CROSS JOIN generate_series(1, 10) s(seq)
ORDER BY x.i, s.seq"""


async def bench_rebuild(pool: asyncpg.Pool, events: int) -> None:
    executions = events // 10
    t = time.perf_counter()
    for start in range(0, executions, 10_000):
        await pool.execute(INSERT_EVENTS, start, min(start + 10_000, executions) - 1)
    await pool.execute("ANALYZE events")
    print(f"\ninserted {executions * 10:,} events in {time.perf_counter() - t:.1f}s")
    store = EventStore(pool)
    t = time.perf_counter()
    pos, scanned = GlobalPosition(), 0
    while batch := await store.read_all(pos, 2000):
        pos, scanned = batch[-1].global_position, scanned + len(batch)
    scan_rate = scanned / (time.perf_counter() - t)
    print(f"{'rebuild':<32} {'events/s':>10} {'/ baseline':>11}")
    print(f"{'baseline: read_all scan':<32} {scan_rate:>10,.0f} {1.0:>10.2f}x")
    for name in ("executions", "state_stats"):
        t = time.perf_counter()
        count = await rebuild(pool, name)
        rate = count / (time.perf_counter() - t)
        print(f"{'rebuild ' + name:<32} {rate:>10,.0f} {rate / scan_rate:>10.2f}x")


async def main(args: argparse.Namespace) -> None:
    url = os.environ.get("STEPLOG_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="steplog-bench-") as tmp:
        if url:
            await run(url, args)
        else:
            async with embedded_servers(Path(tmp)) as (db_url, _):
                await run(db_url, args)


async def run(server_url: str, args: argparse.Namespace) -> None:
    name = f"bench_read_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await asyncpg.create_pool(_with_database(server_url, name), min_size=1, max_size=4)
        try:
            await migrate(pool)
            if args.n:
                seconds = await load_executions(pool, args.n)
                print(f"COPY of {args.n:,} executions: {seconds:.1f}s ({args.n / seconds:,.0f}/s)")
                await bench_listing(pool, args.repeat)
                await pool.execute("TRUNCATE executions_view")
            if args.e:
                await bench_rebuild(pool, args.e)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="read-side benchmark")
    p.add_argument("-n", type=int, default=1_000_000, help="executions in executions_view")
    p.add_argument("-e", type=int, default=1_000_000, help="events for the rebuild benchmark")
    p.add_argument("--repeat", type=int, default=200)
    asyncio.run(main(p.parse_args()))
