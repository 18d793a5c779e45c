"""Benchmark: the event log stored as jsonb (migrations 0001-0004) against json (0005).

Both storages live side by side in one database (schemas ``bench_jsonb`` and
``bench_json``, each an ``events`` table shaped like steplog's), are fed the same
events by the same statements (the store's append, load and global-order scan, with
only the column type and its cast differing), and are measured in alternating rounds
in the same run, so the ratios compare like with like on a loaded machine:

- append: transactions of one execution's 22 events (a 10-state Pass chain), one
  connection, as the engine appends a decision;
- load: all events of one execution by seq, decoded (``msgspec``), as the engine
  replays it; also one execution of 10,000 events;
- scan: the whole log in commit-safe global order, pages of 1,000, decoded;
- size: the tables' bytes, and one event carrying 10,000 x ``1e308`` (the 44x case).

    .venv/bin/python bench/storage.py [--executions 2000] [--rounds 3]
    .venv/bin/python bench/storage.py --database-url postgresql://...   # a running server

Without a URL it starts an embedded PostgreSQL (fsync off) under a temporary folder.
Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

KINDS = ("jsonb", "json")
EVENTS_PER_EXECUTION = 22

_SCHEMA = """
CREATE SCHEMA {s};
CREATE TABLE {s}.events (
    execution_id uuid        NOT NULL,
    seq          int         NOT NULL CHECK (seq >= 1),
    position     bigint      GENERATED ALWAYS AS IDENTITY,
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    type         text        NOT NULL,
    data         {kind}      NOT NULL,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
CREATE INDEX ON {s}.events (tx_id, position);
"""
_APPEND = """
INSERT INTO {s}.events (execution_id, seq, type, data, recorded_at)
SELECT $1, $2 + u.ord, u.type, u.data::{kind}, u.recorded_at
FROM unnest($3::text[], $4::text[], $5::timestamptz[])
     WITH ORDINALITY AS u(type, data, recorded_at, ord)
WHERE $2 = 0 OR EXISTS (SELECT 1 FROM {s}.events WHERE execution_id = $1 AND seq = $2)
ORDER BY u.ord
RETURNING seq, position, tx_id"""
_LOAD = """
SELECT execution_id, seq, position, type, data::text AS data, recorded_at, tx_id
FROM {s}.events WHERE execution_id = $1 AND seq > 0 ORDER BY seq"""
_SCAN = """
SELECT execution_id, seq, position, type, data::text AS data, recorded_at, tx_id
FROM {s}.events
WHERE (tx_id, position) > ($1::text::xid8, $2::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, position LIMIT $3"""

_decode = msgspec.json.Decoder()


def execution_events(i: int) -> list[tuple[str, str]]:
    """(type, data) of a 10-state Pass chain whose input is a small order document."""
    payload = {
        "orderId": f"order-{i}",
        "customer": {"id": i, "name": "Ada Lovelace", "tier": "gold"},
        "items": [{"sku": f"sku-{k}", "qty": k + 1, "price": 9.99 + k} for k in range(3)],
        "total": 35.97,
        "flags": {"express": True, "gift": False},
    }
    out: list[tuple[str, str]] = [
        ("ExecutionStarted", {"type": "ExecutionStarted", "input": payload, "workflow": "wf"})
    ]
    for s in range(10):
        out.append(
            ("PassStateEntered", {"type": "PassStateEntered", "name": f"S{s}", "input": payload})
        )
        out.append(
            ("PassStateExited", {"type": "PassStateExited", "name": f"S{s}", "output": payload})
        )
    out.append(("ExecutionSucceeded", {"type": "ExecutionSucceeded", "output": payload}))
    assert len(out) == EVENTS_PER_EXECUTION
    return [(t, msgspec.json.encode(d).decode()) for t, d in out]  # type: ignore[arg-type]


def _schema(kind: str) -> str:
    return f"bench_{kind}"


async def _append(
    conn: asyncpg.Connection, kind: str, eid: uuid.UUID, events: list[tuple[str, str]]
) -> None:
    ts = datetime.now(UTC)
    sql = _APPEND.format(s=_schema(kind), kind=kind)
    # The engine appends a decision at a time: the start, then the rest in one batch.
    await conn.fetch(sql, eid, 0, [events[0][0]], [events[0][1]], [ts])
    rest = events[1:]
    await conn.fetch(sql, eid, 1, [t for t, _ in rest], [d for _, d in rest], [ts] * len(rest))


def _decode_rows(rows: list[asyncpg.Record]) -> int:
    """Decode as the store and the engine do."""
    for row in rows:
        _decode.decode(row["data"].encode())
    return len(rows)


async def bench_append(
    conn: asyncpg.Connection, kind: str, ids: list[uuid.UUID], offset: int
) -> float:
    start = time.perf_counter()
    for n, eid in enumerate(ids):
        await _append(conn, kind, eid, execution_events(offset + n))
    return len(ids) * EVENTS_PER_EXECUTION / (time.perf_counter() - start)


async def bench_load(conn: asyncpg.Connection, kind: str, ids: list[uuid.UUID]) -> float:
    sql = _LOAD.format(s=_schema(kind))
    start = time.perf_counter()
    n = 0
    for eid in ids:
        n += _decode_rows(await conn.fetch(sql, eid))
    return n / (time.perf_counter() - start)


async def bench_scan(conn: asyncpg.Connection, kind: str) -> float:
    sql = _SCAN.format(s=_schema(kind))
    start = time.perf_counter()
    tx, pos, n = 0, 0, 0
    while rows := await conn.fetch(sql, str(tx), pos, 1000):
        n += _decode_rows(rows)
        tx, pos = rows[-1]["tx_id"], rows[-1]["position"]
    return n / (time.perf_counter() - start)


async def bench_long(conn: asyncpg.Connection, kind: str, eid: uuid.UUID) -> float:
    """Seconds to load and decode one execution of 10,000 events."""
    sql = _LOAD.format(s=_schema(kind))
    start = time.perf_counter()
    _decode_rows(await conn.fetch(sql, eid))
    return time.perf_counter() - start


async def fill_long(conn: asyncpg.Connection, kind: str, eid: uuid.UUID) -> None:
    sql = _APPEND.format(s=_schema(kind), kind=kind)
    events = execution_events(0)[1:21]
    ts = datetime.now(UTC)
    seq = 0
    while seq < 10_000:
        await conn.fetch(sql, eid, seq, [t for t, _ in events], [d for _, d in events], [ts] * 20)
        seq += 20


async def sizes(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        kind: await conn.fetchval(
            "SELECT pg_total_relation_size($1::regclass)", f"{_schema(kind)}.events"
        )
        for kind in KINDS
    }


async def blowup(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """(bytes sent, bytes stored) of an event with 10,000 x 1e308, per storage."""
    text = '{"type":"ExecutionStarted","input":[' + ",".join(["1e308"] * 10_000) + "]}"
    out = {}
    for kind in KINDS:
        stored = await conn.fetchval(f"SELECT octet_length($1::text::{kind}::text)", text)
        out[kind] = (len(text), stored)
    return out


def _ratio(values: dict[str, list[float]]) -> str:
    before, after = statistics.median(values["jsonb"]), statistics.median(values["json"])
    return f"jsonb {before:>12,.0f}   json {after:>12,.0f}   json/jsonb {after / before:5.2f}"


async def run(url: str, executions: int, rounds: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        for kind in KINDS:
            await conn.execute(f"DROP SCHEMA IF EXISTS {_schema(kind)} CASCADE")
            await conn.execute(_SCHEMA.format(s=_schema(kind), kind=kind))
        results: dict[str, dict[str, list[float]]] = {
            "append events/s": {k: [] for k in KINDS},
            "load events/s (22 per execution, decoded)": {k: [] for k in KINDS},
            "scan events/s (global order, decoded)": {k: [] for k in KINDS},
            "load 10,000 events of one execution (ms)": {k: [] for k in KINDS},
        }
        all_ids: dict[str, list[uuid.UUID]] = {k: [] for k in KINDS}
        long_ids = {k: uuid.uuid4() for k in KINDS}
        for kind in KINDS:
            await fill_long(conn, kind, long_ids[kind])
        for r in range(rounds):
            # Alternate which storage goes first, so neither always meets a warmer cache.
            order = KINDS if r % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                ids = [uuid.uuid4() for _ in range(executions)]
                all_ids[kind] += ids
                results["append events/s"][kind].append(
                    await bench_append(conn, kind, ids, r * executions)
                )
            for kind in order:
                results["load events/s (22 per execution, decoded)"][kind].append(
                    await bench_load(conn, kind, all_ids[kind][-executions:])
                )
                results["scan events/s (global order, decoded)"][kind].append(
                    await bench_scan(conn, kind)
                )
                results["load 10,000 events of one execution (ms)"][kind].append(
                    1000 * await bench_long(conn, kind, long_ids[kind])
                )
        print(f"{executions} executions x {EVENTS_PER_EXECUTION} events per round, {rounds} rounds")
        print("medians:")
        for name, values in results.items():
            print(f"  {name:<44} {_ratio(values)}")
        size = await sizes(conn)
        print(
            f"  table bytes (with indexes)                   jsonb {size['jsonb']:>12,}   "
            f"json {size['json']:>12,}   json/jsonb {size['json'] / size['jsonb']:5.2f}"
        )
        for kind, (sent, stored) in (await blowup(conn)).items():
            print(f"  10,000 x 1e308: {sent:,} bytes sent, {stored:,} stored as {kind}")
        for kind in KINDS:
            await conn.execute(f"DROP SCHEMA {_schema(kind)} CASCADE")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _database(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    from steplog.embedded import embedded_servers

    with tempfile.TemporaryDirectory(prefix="steplog-bench-") as folder:
        async with embedded_servers(Path(folder), durable=False) as (db_url, _redis_url):
            yield db_url


async def main(args: Any) -> None:
    async with _database(args.database_url) as url:
        await run(url, args.executions, args.rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--executions", type=int, default=2000, help="executions appended per round and storage"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds (medians are reported)"
    )
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL to use instead of an embedded one"
    )
    asyncio.run(main(parser.parse_args()))
