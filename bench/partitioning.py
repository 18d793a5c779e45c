"""Benchmark: the events table hash-partitioned by execution id, against the table as it is.

Two copies of steplog's events table live side by side in one database, fed the same
events by the same statements (the store's append with its expected-seq check, its
load by execution, and read_all's commit-safe global-order scan) and measured in
alternating rounds in the same run:

- ``plain``: ``CREATE TABLE ... (LIKE public.events INCLUDING ALL)``, the table as
  migrations 0001-0012 make it;
- ``hash``: ``PARTITION BY HASH (execution_id)`` into ``--partitions`` partitions, with
  the same primary key (execution_id, seq) and global-order index (tx_id, position) on
  each. PostgreSQL 16 refuses an identity column on a partitioned table, so ``position``
  takes its values from a sequence (``DEFAULT nextval``) instead: the same values.

Figures (medians of ``--rounds``), each as hash / plain:

- append: ``--connections`` connections, each appending executions of a 10-state Pass
  chain (22 events) as the engine does: the start, then one decision of 21 events;
- load: every event of one execution by seq (the engine's replay), per execution;
- scan: the whole log in commit-safe global order, pages of 1,000 (projector, relay);
- size: the tables' bytes with indexes.

    .venv/bin/python bench/partitioning.py [--executions 2000] [--rounds 3] [--partitions 8]
    .venv/bin/python bench/partitioning.py --database-url postgresql://...

Without a URL it starts an embedded PostgreSQL (fsync on) under a temporary folder and
applies steplog's migrations there (the copies are made LIKE its events table).
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
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory

KINDS = ("plain", "hash")
SCHEMA = "bench_partitioning"
PASS_10 = {
    "StartAt": "S0",
    "States": {
        f"S{i}": ({"Type": "Pass", "Next": f"S{i + 1}"} if i < 9 else {"Type": "Pass", "End": True})
        for i in range(10)
    },
}


def setup_sql(partitions: int) -> str:
    parts = "\n".join(
        f"CREATE TABLE {SCHEMA}.events_hash_{r} PARTITION OF {SCHEMA}.events_hash "
        f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {r});"
        for r in range(partitions)
    )
    return f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.events_plain (LIKE public.events INCLUDING ALL);
CREATE SEQUENCE {SCHEMA}.events_hash_position;
CREATE TABLE {SCHEMA}.events_hash (
    execution_id uuid        NOT NULL,
    seq          int         NOT NULL CHECK (seq >= 1),
    position     bigint      NOT NULL DEFAULT nextval('{SCHEMA}.events_hash_position'),
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    type         text        NOT NULL,
    data         json        NOT NULL,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (execution_id, seq)
) PARTITION BY HASH (execution_id);
CREATE INDEX ON {SCHEMA}.events_hash (tx_id, position);
{parts}
"""


def _table(kind: str) -> str:
    return f"{SCHEMA}.events_{kind}"


# The store's statements (engine/adapters/store.py: APPEND without its timer CTEs,
# LOAD_FORWARD, READ_ALL) on a copy.
_APPEND = """
INSERT INTO {t} (execution_id, seq, type, data, recorded_at)
SELECT $1, $2 + u.ord, u.type, u.data::json, u.recorded_at
FROM unnest($3::text[], $4::text[], $5::timestamptz[])
     WITH ORDINALITY AS u(type, data, recorded_at, ord)
WHERE $2 = 0 OR EXISTS (SELECT 1 FROM {t} WHERE execution_id = $1 AND seq = $2)
ORDER BY u.ord
RETURNING seq, position, tx_id"""
_LOAD = """
SELECT execution_id, seq, position, type, data::text AS data, recorded_at, tx_id
FROM {t} WHERE execution_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"""
_SCAN = """
SELECT execution_id, seq, position, type, data::text AS data, recorded_at, tx_id
FROM {t}
WHERE (tx_id, position) > ($1::text::xid8, $2::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, position LIMIT $3"""


def execution_events() -> list[tuple[str, str]]:
    doc = {"orderId": "order-1", "customer": {"id": 1, "name": "Ada Lovelace"}}
    run = run_in_memory(compile_definition(PASS_10), doc)
    return [(ev.event_type(e), ev.encode_event(e).decode()) for e in run.events]


async def bench_append(
    pool: asyncpg.Pool, kind: str, ids: list[uuid.UUID], events: list[tuple[str, str]], conns: int
) -> float:
    sql = _APPEND.format(t=_table(kind))
    queue = list(ids)

    async def one_connection() -> None:
        async with pool.acquire() as conn:
            while queue:
                eid = queue.pop()
                now = datetime.now(UTC)
                await conn.fetch(sql, eid, 0, [events[0][0]], [events[0][1]], [now])
                rest = events[1:]
                await conn.fetch(
                    sql, eid, 1, [t for t, _ in rest], [d for _, d in rest], [now] * len(rest)
                )

    t = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(conns)))
    return len(ids) * len(events) / (time.perf_counter() - t)


async def bench_load(conn: asyncpg.Connection, kind: str, ids: list[uuid.UUID]) -> float:
    """Milliseconds per execution loaded (22 events, decoded)."""
    sql = _LOAD.format(t=_table(kind))
    t = time.perf_counter()
    for eid in ids:
        for row in await conn.fetch(sql, eid, 0, 2**31 - 1):
            ev.decode_event(row["data"])
    return (time.perf_counter() - t) * 1000 / len(ids)


async def bench_scan(conn: asyncpg.Connection, kind: str) -> float:
    sql = _SCAN.format(t=_table(kind))
    t = time.perf_counter()
    tx, pos, n = 0, 0, 0
    while rows := await conn.fetch(sql, str(tx), pos, 1000):
        for row in rows:
            ev.decode_event(row["data"])
        n += len(rows)
        tx, pos = rows[-1]["tx_id"], rows[-1]["position"]
    return n / (time.perf_counter() - t)


async def size(conn: asyncpg.Connection, kind: str) -> int:
    if kind == "plain":
        return int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", _table(kind)))
    return int(
        await conn.fetchval(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree($1::regclass)",
            _table(kind),
        )
    )


async def plan(conn: asyncpg.Connection, kind: str) -> str:
    """The scan's plan shape (its node types), for the report."""
    rows = await conn.fetch("EXPLAIN (COSTS OFF) " + _SCAN.format(t=_table(kind)), "0", 0, 1000)
    lines = [r[0].strip().lstrip("-> ").split(" on ")[0].split(" using ")[0] for r in rows]
    return " > ".join(
        dict.fromkeys(
            x for x in lines if x and not x.startswith(("Sort Key", "Index Cond", "Filter"))
        )
    )


async def run(url: str, executions: int, rounds: int, partitions: int, conns: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=conns + 1, max_size=conns + 1)
    try:
        await pool.execute(setup_sql(partitions))
        events = execution_events()
        results: dict[str, dict[str, list[float]]] = {
            "append events/s": {k: [] for k in KINDS},
            "load ms per execution (22 events)": {k: [] for k in KINDS},
            "scan events/s (global order)": {k: [] for k in KINDS},
        }
        appended: dict[str, list[uuid.UUID]] = {k: [] for k in KINDS}
        for r in range(rounds):
            order = KINDS if r % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                ids = [uuid.uuid4() for _ in range(executions)]
                appended[kind] += ids
                results["append events/s"][kind].append(
                    await bench_append(pool, kind, ids, events, conns)
                )
            async with pool.acquire() as conn:
                await conn.execute(f"ANALYZE {_table('plain')}; ANALYZE {_table('hash')}")
                for kind in order:
                    sample = appended[kind][-min(500, executions) :]
                    results["load ms per execution (22 events)"][kind].append(
                        await bench_load(conn, kind, sample)
                    )
                    results["scan events/s (global order)"][kind].append(
                        await bench_scan(conn, kind)
                    )
        async with pool.acquire() as conn:
            sizes = {k: await size(conn, k) for k in KINDS}
            plans = {k: await plan(conn, k) for k in KINDS}
            await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    finally:
        await pool.close()
    total = executions * rounds
    print(
        f"events table, plain vs hash-partitioned ({partitions} partitions): {rounds} rounds of "
        f"{executions} executions x {len(events)} events, {conns} connections appending"
    )
    print(f"  {'medians':<36} {'plain':>12} {'hash':>12} {'hash/plain':>11}")
    for name, values in results.items():
        plain, hashed = statistics.median(values["plain"]), statistics.median(values["hash"])
        print(f"  {name:<36} {plain:>12,.2f} {hashed:>12,.2f} {hashed / plain:>11.2f}")
    print(
        f"  {'bytes with indexes':<36} {sizes['plain']:>12,} {sizes['hash']:>12,} "
        f"{sizes['hash'] / sizes['plain']:>11.2f}"
    )
    print(f"  ({total:,} executions, {total * len(events):,} events per table at the end)")
    for kind in KINDS:
        print(f"  scan plan, {kind}: {plans[kind]}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


@contextlib.asynccontextmanager
async def database(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    from steplog.embedded import embedded_servers
    from steplog.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="steplog-part-") as folder:
        async with embedded_servers(Path(folder)) as (db_url, _redis_url):
            conn = await asyncpg.connect(db_url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            yield db_url


async def main(args: argparse.Namespace) -> None:
    async with database(args.database_url) as url:
        await run(url, args.executions, args.rounds, args.partitions, args.connections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--executions", type=int, default=2000, help="per round and table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4, help="appending connections")
    parser.add_argument("--database-url", default=None)
    asyncio.run(main(parser.parse_args()))
