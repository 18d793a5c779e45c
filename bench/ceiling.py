"""Benchmark: the ceiling steplog's workloads are measured against (issue #13).

Two bare-client ceilings, on the same PostgreSQL and Redis steplog uses:

- write path: for each execution of a workload (the 10-state Pass chain, the 1-state
  Pass), exactly the rows and stream entries steplog writes for it - the executions
  row, its events (22 for pass10, 4 for pass1; payloads made by the engine's own core
  and encoder, `engine.core.inmemory` + `encode_event`), one events-stream entry per
  event and one Begin trigger entry (`engine.adapters.bus.event_fields` /
  `trigger_fields`) - written by bare asyncpg (unnest batches of ``--batch``
  executions in one transaction, ``--connections`` connections) into copies of
  steplog's tables (``CREATE TABLE ... (LIKE ... INCLUDING ALL)`` in schema
  ``bench_ceiling``) and one pipelined XADD round trip per batch to the partition
  streams (prefix ``bench-ceiling``, so no steplog process reads them);
- POST + one INSERT: an aiohttp server (its own process) whose one route decodes the
  JSON body and INSERTs one executions row, driven by a client with ``--concurrency``
  requests in flight; start latency p50/p99.

Not written by the ceiling (a known gap, steplog writes them): the projector's read-model
rows (executions_view ...), the relay checkpoint, pg_notify.

    .venv/bin/python bench/ceiling.py [-n 400] [--batch 50] [--connections 4]
    .venv/bin/python bench/ceiling.py --data-dir .steplog     # the servers of a running steplog
    .venv/bin/python bench/ceiling.py --database-url postgresql://... --redis-url redis://...

Without URLs it uses the servers of ``--data-dir`` (its servers.json), else starts embedded
PostgreSQL (fsync on) and Redis (AOF) under a temporary folder, as `steplog dev` does.
bench/transitions.py --ceiling runs it in the same run as the workloads and prints ratios.
Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiohttp import web
from redis.asyncio import Redis

from engine.adapters.bus import DEFAULT_EVENTS_MAXLEN, Keys, event_fields, trigger_fields
from engine.adapters.store import input_hash
from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory
from engine.messages import Begin

SCHEMA = "bench_ceiling"
PREFIX = "bench-ceiling"
PARTITIONS = 4

PASS_1 = {"StartAt": "S0", "States": {"S0": {"Type": "Pass", "End": True}}}
PASS_10 = {
    "StartAt": "S0",
    "States": {
        f"S{i}": ({"Type": "Pass", "Next": f"S{i + 1}"} if i < 9 else {"Type": "Pass", "End": True})
        for i in range(10)
    },
}
WORKLOADS = {"pass1": (PASS_1, 1), "pass10": (PASS_10, 10)}

_SETUP = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
DROP TABLE IF EXISTS {SCHEMA}.events, {SCHEMA}.executions;
CREATE TABLE {SCHEMA}.events (LIKE public.events INCLUDING ALL);
CREATE TABLE {SCHEMA}.executions (LIKE public.executions INCLUDING ALL);
"""
_DROP = f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
# What START_EXECUTION and APPEND insert, for a batch of executions at once.
_INSERT_EXECUTIONS = f"""
INSERT INTO {SCHEMA}.executions
    (execution_id, namespace, workflow, version, name, input, input_hash, started_at)
SELECT u.id, 'default', u.workflow, 1, u.name, u.input::json, u.hash, u.started
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
     AS u(id, workflow, name, input, hash, started)"""
_INSERT_EVENTS = f"""
INSERT INTO {SCHEMA}.events (execution_id, seq, type, data, recorded_at)
SELECT u.id, u.seq, u.type, u.data::json, u.at
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::timestamptz[])
     WITH ORDINALITY AS u(id, seq, type, data, at, ord)
ORDER BY u.ord
RETURNING position"""


def input_document(i: int) -> dict[str, Any]:
    return {
        "orderId": f"order-{i}",
        "customer": {"id": i, "name": "Ada Lovelace", "tier": "gold"},
        "items": [{"sku": f"sku-{k}", "qty": k + 1} for k in range(3)],
    }


@dataclass(frozen=True)
class Execution:
    execution_id: uuid.UUID
    name: str
    input_json: str
    input_hash: str
    events: list[tuple[str, str]]  # (type, data) as the engine encodes them


@dataclass(frozen=True)
class Committed:
    """What `event_fields` reads of a committed event (engine.core.events.CommittedEvent)."""

    execution_id: uuid.UUID
    seq: int
    position: int
    type: str
    timestamp: datetime
    data: bytes


def make_executions(workload: str, n: int) -> list[Execution]:
    """The events the engine's core records for ``n`` executions (made before timing)."""
    definition = compile_definition(WORKLOADS[workload][0])
    out = []
    for i in range(n):
        eid = uuid.uuid4()
        name = f"ceiling-{eid}"
        doc = input_document(i)
        run = run_in_memory(definition, doc, execution_id=str(eid), name=name, workflow=workload)
        events = [(ev.event_type(e), ev.encode_event(e).decode()) for e in run.events]
        input_json = msgspec.json.encode(doc)
        out.append(Execution(eid, name, input_json.decode(), input_hash(input_json), events))
    return out


async def write_path(
    database_url: str, redis_url: str, workload: str, n: int, batch: int, connections: int
) -> dict[str, float]:
    """Executions/s and transitions/s of the bare write path for ``workload``."""
    executions = make_executions(workload, n)
    keys = Keys(PREFIX)
    pool = await asyncpg.create_pool(database_url, min_size=connections, max_size=connections)
    redis = Redis.from_url(redis_url)
    try:
        async with pool.acquire() as conn:
            await conn.execute(_SETUP)
        batches = [executions[i : i + batch] for i in range(0, n, batch)]
        queue: asyncio.Queue[list[Execution]] = asyncio.Queue()
        for b in batches:
            queue.put_nowait(b)

        async def one(group: list[Execution]) -> None:
            now = datetime.now(UTC)
            ids, seqs, types, datas = [], [], [], []
            for x in group:
                for seq, (t, d) in enumerate(x.events, 1):
                    ids.append(x.execution_id)
                    seqs.append(seq)
                    types.append(t)
                    datas.append(d)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    _INSERT_EXECUTIONS,
                    [x.execution_id for x in group],
                    [workload] * len(group),
                    [x.name for x in group],
                    [x.input_json for x in group],
                    [x.input_hash for x in group],
                    [now] * len(group),
                )
                rows = await conn.fetch(_INSERT_EVENTS, ids, seqs, types, datas, [now] * len(ids))
            pipe = redis.pipeline(transaction=False)
            for eid, seq, t, d, row in zip(ids, seqs, types, datas, rows, strict=True):
                part = _partition(eid)
                fields = event_fields(Committed(eid, seq, row["position"], t, now, d.encode()))
                pipe.xadd(keys.events(part), fields, maxlen=DEFAULT_EVENTS_MAXLEN, approximate=True)
                if seq == 1:
                    pipe.xadd(keys.triggers(part), trigger_fields(eid, Begin()))
            await pipe.execute()

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
        # Everything was written: the rows and the stream entries steplog writes.
        async with pool.acquire() as conn:
            rows = await conn.fetchval(f"SELECT count(*) FROM {SCHEMA}.events")
        entries = sum([await redis.xlen(keys.events(p)) for p in range(PARTITIONS)])
        begins = sum([await redis.xlen(keys.triggers(p)) for p in range(PARTITIONS)])
        expected = sum(len(x.events) for x in executions)
        assert rows == entries == expected and begins == n, (rows, entries, begins, expected)
    finally:
        async with pool.acquire() as conn:
            await conn.execute(_DROP)
        await pool.close()
        await redis.delete(*[keys.events(p) for p in range(PARTITIONS)])
        await redis.delete(*[keys.triggers(p) for p in range(PARTITIONS)])
        await redis.aclose()
    states = WORKLOADS[workload][1]
    return {"executions_per_s": n / elapsed, "transitions_per_s": n * states / elapsed}


def _partition(execution_id: uuid.UUID) -> int:
    """As `Bus.partition_of`."""
    return zlib.crc32(str(execution_id).encode()) % PARTITIONS


# -- POST + one INSERT ------------------------------------------------------------------

_INSERT_ONE = f"""
INSERT INTO {SCHEMA}.executions
    (execution_id, namespace, workflow, version, name, input, input_hash, started_at)
VALUES ($1, 'default', $2, 1, $3, $4::text::json, $5, now())"""


def serve(database_url: str, port: int) -> None:
    """The bare server: POST /executions decodes the JSON body and INSERTs one row."""
    decoder = msgspec.json.Decoder()

    async def start(request: web.Request) -> web.Response:
        body = decoder.decode(await request.read())
        eid = uuid.uuid4()
        await request.app["pool"].execute(
            _INSERT_ONE, eid, "pass1", str(eid), msgspec.json.encode(body["input"]).decode(), "0"
        )
        return web.json_response({"execution_id": str(eid)}, status=201)

    async def on_startup(app: web.Application) -> None:
        app["pool"] = await asyncpg.create_pool(database_url, min_size=4, max_size=10)

    async def on_cleanup(app: web.Application) -> None:
        await app["pool"].close()

    app = web.Application()
    app.router.add_post("/executions", start)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


WARM_UP = 500  # untimed requests before the POST + INSERT ceiling is timed (at least)


@contextlib.asynccontextmanager
async def bare_server(database_url: str) -> AsyncIterator[str]:
    """The bare POST + INSERT server, started (its table made) and answering: its URL
    (POST a JSON body with an ``input``). Stopped, its table dropped, on exit."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(_SETUP)
    finally:
        await conn.close()
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "serve", "--database-url", database_url, "--port", str(port)
    )
    url = f"http://127.0.0.1:{port}/executions"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.post(url, json={"input": {}}) as resp:
                        if resp.status == 201:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(_DROP)
        finally:
            await conn.close()


async def post_insert(database_url: str, n: int, concurrency: int) -> dict[str, float]:
    """Requests/s and latency of the bare POST + INSERT server (started here, stopped after)."""
    async with bare_server(database_url) as url, aiohttp.ClientSession() as http:
        latencies: list[float] = []
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                async with http.post(url, json={"input": input_document(i)}) as resp:
                    assert resp.status == 201, await resp.text()
                    await resp.read()
                latencies.append(time.perf_counter() - t0)

        # Warmed up first, untimed (its connections, statements and client pool): a
        # fresh server's first few hundred requests ran at about two thirds of its
        # speed, and 400 timed requests last a tenth of a second, so the ceiling was
        # under-measured (and steplog, long warm, flattered) by a third at times.
        await asyncio.gather(*(one(-1 - i) for i in range(max(WARM_UP, n // 2))))
        latencies.clear()
        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "executions_per_s": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(
    database_url: str, redis_url: str, n: int, batch: int, connections: int, concurrency: int
) -> dict[str, dict[str, float]]:
    """Every ceiling once: write path of pass10 and pass1, and POST + INSERT."""
    return {
        "pass10": await write_path(database_url, redis_url, "pass10", n, batch, connections),
        "pass1": await write_path(database_url, redis_url, "pass1", n, batch, connections),
        "post_insert": await post_insert(database_url, n, concurrency),
    }


def print_ceilings(results: dict[str, dict[str, float]]) -> None:
    for name in ("pass10", "pass1"):
        r = results[name]
        print(
            f"ceiling write path {name:6}: {r['executions_per_s']:9.1f} exec/s "
            f"{r['transitions_per_s']:10.1f} transitions/s"
        )
    r = results["post_insert"]
    print(
        f"ceiling POST + INSERT     : {r['executions_per_s']:9.1f} req/s  "
        f"p50 {r['p50_ms']:.1f}ms p99 {r['p99_ms']:.1f}ms"
    )


def servers_of(data_dir: Path) -> tuple[str, str]:
    """The (database_url, redis_url) a running steplog published in its data folder."""
    try:
        doc = json.loads((data_dir / "servers.json").read_text())
    except OSError as exc:
        raise SystemExit(f"no running steplog owns {data_dir} ({exc})") from None
    return str(doc["database_url"]), str(doc["redis_url"])


async def _main(args: argparse.Namespace) -> None:
    urls: tuple[str, str] | None = None
    if args.database_url and args.redis_url:
        urls = (args.database_url, args.redis_url)
    elif args.data_dir:
        urls = servers_of(Path(args.data_dir))
    if urls is not None:
        print_ceilings(await measure(*urls, args.n, args.batch, args.connections, args.concurrency))
        return
    from steplog.embedded import embedded_servers
    from steplog.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="steplog-ceiling-") as data:
        async with embedded_servers(data) as (database_url, redis_url):
            conn = await asyncpg.connect(database_url)
            try:  # the tables the copies are made LIKE
                await migrate(conn)
            finally:
                await conn.close()
            print_ceilings(
                await measure(
                    database_url, redis_url, args.n, args.batch, args.connections, args.concurrency
                )
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        p = argparse.ArgumentParser()
        p.add_argument("serve")
        p.add_argument("--database-url", required=True)
        p.add_argument("--port", type=int, required=True)
        a = p.parse_args()
        serve(a.database_url, a.port)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=400, help="executions per ceiling")
    parser.add_argument("--batch", type=int, default=50, help="executions per transaction")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32, help="POST + INSERT clients")
    parser.add_argument("--data-dir", default=os.environ.get("STEPLOG_DATA_DIR"))
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
