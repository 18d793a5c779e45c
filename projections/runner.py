"""The projector: keeps a read model current from the event streams, and can
rebuild it from PostgreSQL while the service runs.

Contracts
- `Projector(pool, store, bus).run(stop_event)` follows the events streams
  through its own consumer group ("projection:executions"), applies each batch
  idempotently in one PostgreSQL transaction and XACKs only after the commit.
- PostgreSQL is the source of truth: the checkpoint (a `GlobalPosition` in
  `projection_checkpoints`) advances only by `catch_up`, which reads
  `store.read_all` from it and writes rows and checkpoint in one transaction.
  Everything at or before the checkpoint is applied, whatever Redis lost.
  `run` catches up at start, after a seq gap, after a Redis error (e.g. a flush
  that dropped the group) and every `catchup_interval` seconds, so an event
  lost from Redis is applied at the latest by the next periodic catch-up.
- A Redis-delivered event whose execution misses earlier events is repaired at
  once from `store.load` (projections.executions.apply_events).
- `rebuild(pool, "executions")` refills the read model in global order into a
  fresh table and swaps it in with its checkpoint in one transaction.

Lock order, everywhere: checkpoint row, then the read-model table or its rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
from collections.abc import Sequence
from uuid import UUID

import asyncpg
import redis.exceptions

from engine.bus import Bus, StreamEntry
from engine.store import EventStore, GlobalPosition, StoredEvent
from projections import executions

log = logging.getLogger(__name__)

NAME = "executions"
GROUP = "projection:executions"
PROJECTIONS = {NAME: executions.TABLE}

GET_CHECKPOINT = """
SELECT tx_id::text, position FROM projection_checkpoints WHERE name = $1"""
LOCK_CHECKPOINT = """
SELECT tx_id::text, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE"""
INIT_CHECKPOINT = """
INSERT INTO projection_checkpoints (name, tx_id, position) VALUES ($1, '0'::xid8, 0)
ON CONFLICT (name) DO NOTHING"""
SET_CHECKPOINT = """
UPDATE projection_checkpoints SET tx_id = $2::text::xid8, position = $3, updated_at = now()
WHERE name = $1"""


def _position(record: asyncpg.Record | None) -> GlobalPosition:
    return GlobalPosition() if record is None else GlobalPosition(int(record[0]), record[1])


async def get_checkpoint(conn: asyncpg.Pool | asyncpg.Connection, name: str) -> GlobalPosition:
    """Where projection `name` has applied up to (the beginning when never run)."""
    return _position(await conn.fetchrow(GET_CHECKPOINT, name))


async def _lock_checkpoint(conn: asyncpg.Connection, name: str) -> GlobalPosition:
    await conn.execute(INIT_CHECKPOINT, name)
    return _position(await conn.fetchrow(LOCK_CHECKPOINT, name))


async def _set_checkpoint(conn: asyncpg.Connection, name: str, pos: GlobalPosition) -> None:
    await conn.execute(SET_CHECKPOINT, name, str(pos.tx_id), pos.position)


def _loader(store: EventStore) -> executions.LoadMissing:
    async def load_missing(execution_id: UUID, after: int, upto: int) -> list[StoredEvent]:
        return await store.load(execution_id, after_seq=after, upto_seq=upto)

    return load_missing


async def catch_up(
    pool: asyncpg.Pool,
    store: EventStore,
    *,
    name: str = NAME,
    table: str = executions.TABLE,
    batch_size: int = 500,
) -> int:
    """Apply every committed event after the checkpoint; returns how many were read.

    Each batch is read with `store.read_all` *before* its transaction opens (an
    open transaction of ours would hold back read_all's snapshot horizon), then
    applied with the checkpoint in one transaction; when the checkpoint moved
    meanwhile (another projector, a rebuild) the batch is dropped and re-read.
    """
    total = 0
    while True:
        start = await get_checkpoint(pool, name)
        batch = await store.read_all(start, batch_size)
        if not batch:
            return total
        async with pool.acquire() as conn, conn.transaction():
            if await _lock_checkpoint(conn, name) != start:
                continue
            await executions.apply_events(conn, batch, load_missing=_loader(store), table=table)
            await _set_checkpoint(conn, name, batch[-1].global_position)
        total += len(batch)


def entry_event(entry: StreamEntry) -> StoredEvent:
    """An events-stream entry (engine.bus.event_fields) as a StoredEvent (tx_id unknown)."""
    f = entry.fields
    return StoredEvent(
        execution_id=UUID(f["execution_id"].decode()),
        seq=int(f["seq"]),
        position=int(f["position"]),
        type=f["type"].decode(),
        data=f["data"],
        timestamp=dt.datetime.fromisoformat(f["timestamp"].decode()),
    )


class Projector:
    """Runs the executions projection until `stop_event` is set (see module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        bus: Bus,
        *,
        consumer: str | None = None,
        batch_size: int = 500,
        block_ms: int = 1000,
        catchup_interval: float = 5.0,
        retry_delay: float = 1.0,
    ) -> None:
        self.pool = pool
        self.store = store
        self.bus = bus
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.catchup_interval = catchup_interval
        self.retry_delay = retry_delay
        self.applied = 0  # events applied from the stream (observability, tests)

    async def ensure_groups(self) -> None:
        for stream in self.bus.events_streams():
            # "$": history is caught up from PostgreSQL, not re-read from the stream.
            await self.bus.ensure_group(stream, GROUP, start_id="$")

    async def catch_up(self) -> int:
        return await catch_up(self.pool, self.store, batch_size=self.batch_size)

    async def run(self, stop_event: asyncio.Event) -> None:
        """Catch up from PostgreSQL, then follow the streams; returns once
        `stop_event` is set (within about block_ms). A batch being applied when
        the stop comes is finished (shielded) so its XACK follows its commit."""
        loop = asyncio.get_running_loop()
        next_catch_up = 0.0
        pending = True  # first read this consumer's own unacknowledged entries
        while not stop_event.is_set():
            try:
                if loop.time() >= next_catch_up:
                    await self.ensure_groups()
                    await self.catch_up()
                    next_catch_up = loop.time() + self.catchup_interval
                entries = await self._read(pending)
                if pending and not entries:
                    pending = False
                    continue
                if not entries:
                    continue
                gap = await asyncio.shield(self._apply(entries))
                if gap:
                    next_catch_up = 0.0  # let PostgreSQL fill in whatever else Redis lost
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, asyncpg.PostgresError, OSError) as exc:
                log.warning("projector %s: %r; retrying", NAME, exc)
                next_catch_up = 0.0
                pending = True
                await _sleep_or_stop(stop_event, self.retry_delay)

    async def _read(self, pending: bool) -> list[StreamEntry]:
        streams: Sequence[str] | dict[str, str] = self.bus.events_streams()
        if pending:
            streams = dict.fromkeys(streams, "0")
        return await self.bus.read_group(
            GROUP,
            self.consumer,
            streams,
            count=self.batch_size,
            block_ms=None if pending else self.block_ms,
        )

    async def _apply(self, entries: list[StreamEntry]) -> bool:
        """Apply one batch, commit, then XACK; True when an execution had a gap."""
        events = []
        for entry in entries:
            try:
                events.append(entry_event(entry))
            except (KeyError, ValueError) as exc:
                # Not an event entry of ours: PostgreSQL still has every event, so
                # acknowledging it loses nothing (the next catch-up reads the log).
                log.error("projector %s: skipping malformed entry %s: %r", NAME, entry.id, exc)
        async with self.pool.acquire() as conn, conn.transaction():
            result = await executions.apply_events(conn, events, load_missing=_loader(self.store))
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            await self.bus.ack(stream, GROUP, ids)
        self.applied += result.applied
        return result.gaps > 0 or result.repaired > 0


async def _sleep_or_stop(stop_event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop_event.wait(), seconds)
    except TimeoutError:
        pass


# --- rebuild ---------------------------------------------------------------------------


_INDEXES = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = $1"""


def _index_shape(indexdef: str, index: str, table: str) -> str:
    """An index definition with its own and its table's names blanked out."""
    return indexdef.replace(f" INDEX {index} ON ", " INDEX _ ON ").replace(f".{table} ", "._ ")


async def rebuild(pool: asyncpg.Pool, name: str, *, batch_size: int = 2000) -> int:
    """Rebuild projection `name` from PostgreSQL without stopping the service.

    Fills `<table>_new` (LIKE <table> INCLUDING ALL) from the whole log in
    global order, then in one transaction: lock the checkpoint row and the live
    table, apply what was committed meanwhile, swap the tables (index names kept)
    and set the checkpoint to the last event applied. Live projectors then go on
    from that checkpoint. Returns the number of events applied.
    """
    table = PROJECTIONS.get(name)
    if table is None:
        raise ValueError(f"unknown projection {name!r}; known: {sorted(PROJECTIONS)}")
    store = EventStore(pool)
    new, old = f"{table}_new", f"{table}_old"
    async with pool.acquire() as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {new}")
        await conn.execute(f"CREATE TABLE {new} (LIKE {table} INCLUDING ALL)")
    pos, total = GlobalPosition(), 0
    while batch := await store.read_all(pos, batch_size):
        async with pool.acquire() as conn, conn.transaction():
            await executions.apply_events(conn, batch, load_missing=_loader(store), table=new)
        pos, total = batch[-1].global_position, total + len(batch)
    async with pool.acquire() as conn, conn.transaction():
        await _lock_checkpoint(conn, name)
        await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        while batch := await store.read_all(pos, batch_size):
            await executions.apply_events(conn, batch, load_missing=_loader(store), table=new)
            pos, total = batch[-1].global_position, total + len(batch)
        old_indexes = await conn.fetch(_INDEXES, table)
        new_indexes = await conn.fetch(_INDEXES, new)
        await conn.execute(f"ALTER TABLE {table} RENAME TO {old}")
        await conn.execute(f"ALTER TABLE {new} RENAME TO {table}")
        await conn.execute(f"DROP TABLE {old}")
        by_shape = {_index_shape(d, n, new): n for n, d in new_indexes}
        for index, indexdef in old_indexes:
            match = by_shape.get(_index_shape(indexdef, index, table))
            if match is not None and match != index:
                await conn.execute(f"ALTER INDEX {match} RENAME TO {index}")
        await _set_checkpoint(conn, name, pos)
    log.info("projection %s rebuilt from %d events", name, total)
    return total
