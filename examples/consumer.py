"""A consumer of steplog's event stream, in its own consumer group: copy it.

    python examples/consumer.py --redis redis://localhost:6379 --group audit-log

It follows every partition's events stream (docs/event-stream.md), handles each
event exactly once per (execution_id, seq) and acknowledges an entry only after
its effect is durable. The "effect" here is a row in a SQLite file written in
the same transaction as the highest seq handled per execution, so a crash at
any point neither loses nor repeats an effect; replace `handle` with your own.

On start it re-reads its own pending entries (left by a crash), then new ones;
now and then it claims entries of consumers of its group that died. Needs only
the `redis` package (pip install redis).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sqlite3
import time
import zlib
from typing import Any

import redis

log = logging.getLogger("consumer")
SCHEMA_VERSION = b"1"
CLAIM_EVERY_S = 30
CLAIM_IDLE_MS = 60_000


def stream_names(prefix: str, partitions: int) -> list[str]:
    return [f"{{{prefix}:p{n}}}:events" for n in range(partitions)]


def partition_of(execution_id: str, partitions: int) -> int:
    """Which stream carries an execution (useful to follow just one)."""
    return zlib.crc32(execution_id.encode()) % partitions


def ensure_group(r: redis.Redis, stream: str, group: str, start: str) -> None:
    try:
        r.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):  # the group exists already: fine
            raise


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS seen (execution_id TEXT PRIMARY KEY, seq INT)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS effects (execution_id TEXT, seq INT, type TEXT,"
        " at TEXT, state TEXT, PRIMARY KEY (execution_id, seq))"
    )
    return db


def handle(
    db: sqlite3.Connection, execution_id: str, seq: int, kind: str, at: str, data: Any
) -> None:
    """Your effect goes here; it runs inside the transaction that records the seq."""
    db.execute(
        "INSERT INTO effects VALUES (?, ?, ?, ?, ?)",
        (execution_id, seq, kind, at, data.get("name")),
    )
    log.info("%s #%d %s %s", execution_id, seq, kind, data.get("name", ""))


def process(db: sqlite3.Connection, fields: dict[bytes, bytes]) -> None:
    """One entry, exactly once per (execution_id, seq)."""
    if fields.get(b"v") != SCHEMA_VERSION:
        log.warning("skipping an entry of unknown schema version %r", fields.get(b"v"))
        return
    execution_id = fields[b"execution_id"].decode()
    seq = int(fields[b"seq"])
    with db:  # one transaction: the effect and the seq, or neither
        row = db.execute("SELECT seq FROM seen WHERE execution_id = ?", (execution_id,)).fetchone()
        last = row[0] if row else 0
        if seq <= last:
            return  # a redelivery: already handled
        if seq != last + 1:
            # Events were missed (stream trimmed, Redis flushed): fetch seq last+1 .. seq-1
            # from GET /v1/executions/{id}/history?cursor=... before going on, if it matters.
            log.warning(
                "%s: seq %d follows %d; events in between were missed", execution_id, seq, last
            )
        data = json.loads(fields[b"data"])
        handle(db, execution_id, seq, fields[b"type"].decode(), fields[b"timestamp"].decode(), data)
        db.execute(
            "INSERT INTO seen VALUES (?, ?) ON CONFLICT (execution_id) DO UPDATE SET seq = excluded.seq",
            (execution_id, seq),
        )


def consume(args: argparse.Namespace) -> None:
    r = redis.Redis.from_url(args.redis)
    db = open_db(args.db)
    streams = stream_names(args.prefix, args.partitions)
    for stream in streams:
        ensure_group(r, stream, args.group, args.start)
    pending = True  # our own unacknowledged entries first (a restart after a crash)
    last_claim = 0.0
    while True:
        if time.monotonic() - last_claim > CLAIM_EVERY_S:
            last_claim = time.monotonic()
            for stream in streams:
                _, claimed, *_ = r.xautoclaim(stream, args.group, args.consumer, CLAIM_IDLE_MS)
                for entry_id, fields in claimed:
                    if fields:
                        process(db, fields)
                    r.xack(stream, args.group, entry_id)
        ids = {s: "0" if pending else ">" for s in streams}
        try:
            reply = r.xreadgroup(
                args.group, args.consumer, ids, count=100, block=None if pending else args.block_ms
            )
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            log.warning("the group is gone (Redis lost its data?): creating it again")
            for stream in streams:
                ensure_group(r, stream, args.group, "0")
            continue
        got = 0
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                if fields:  # None: a pending entry trimmed from the stream
                    process(db, fields)
                r.xack(stream, args.group, entry_id)  # after the commit above
                got += 1
        if pending and not got:
            pending = False
        elif args.once and not pending and not got:
            return


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default="redis://localhost:6379/0")
    p.add_argument("--prefix", default="steplog", help="STEPLOG_REDIS_PREFIX")
    p.add_argument("--partitions", type=int, default=4, help="STEPLOG_PARTITIONS")
    p.add_argument("--group", default="example-consumer")
    p.add_argument("--consumer", default=socket.gethostname())
    p.add_argument("--start", default="$", help="where a new group starts: $ (new) or 0 (oldest)")
    p.add_argument("--db", default="consumer.sqlite3")
    p.add_argument("--once", action="store_true", help="stop when nothing new arrives")
    p.add_argument("--block-ms", type=int, default=2000, help="wait this long for new entries")
    return p


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    consume(parser().parse_args())


if __name__ == "__main__":
    main()
