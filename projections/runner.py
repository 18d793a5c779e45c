"""The projection runner: keeps every read model current from the event log, and
rebuilds one from PostgreSQL while the service runs.

Contracts
- A projection (projections/base.py) is fed by `Projector(pool, store, bus,
  projection=...)`, one per projection, each with its own consumer group
  ("projection:<name>") on the events streams.
- PostgreSQL is the source of truth and the stream is the doorbell: the data
  applied always comes from `store.read_all` after the projection's checkpoint
  (a `GlobalPosition` in `projection_checkpoints`), written with the rows in one
  transaction (`catch_up`). So every committed event is applied exactly once, in
  global order, whatever Redis lost, duplicated or reordered. This costs no
  latency: the relay publishes an event only after read_all returned it, so an
  event announced on the stream is already readable there.
- The runner waits on its group as on a doorbell (`Bus.wait_for_entries`: nothing
  is delivered or left pending, the group is moved past what rang), then catches
  up; it also catches up at start, after a Redis error (e.g. a flush that dropped
  the group) and every `catchup_interval` seconds.
- The projectors of one process read the log through one `SharedReads`: caught up
  alike, they ask for the same events after each doorbell, and one read serves both.
- `rebuild(pool, name)` refills every table of the projection in global order
  into fresh tables and swaps them in, with the checkpoint, in one transaction.

Lock order, everywhere: checkpoint row, then the read-model tables or their rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol

import asyncpg

from engine.adapters.bus import Bus
from engine.adapters.postgres import translate_errors
from engine.adapters.store import EventStore, GlobalPosition, StoredEvent
from engine.errors import BusError, Unavailable
from engine.stopping import shielded, sleep_or_stop
from projections import executions, stats
from projections.base import Projection

log = logging.getLogger(__name__)

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (executions.PROJECTION, stats.PROJECTION)}
NAME = executions.PROJECTION.name
GROUP = executions.PROJECTION.group

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


def projection_named(name: str) -> Projection:
    """The registered projection ``name`` (ValueError naming the known ones)."""
    projection = PROJECTIONS.get(name)
    if projection is None:
        raise ValueError(f"unknown projection {name!r}; known: {sorted(PROJECTIONS)}")
    return projection


def _position(record: asyncpg.Record | None) -> GlobalPosition:
    return GlobalPosition() if record is None else GlobalPosition(int(record[0]), record[1])


async def get_checkpoint(conn: asyncpg.Pool | asyncpg.Connection, name: str) -> GlobalPosition:
    """Where projection `name` has applied up to (the beginning when never run)."""
    return _position(await conn.fetchrow(GET_CHECKPOINT, name))


async def _lock_checkpoint(conn: asyncpg.Connection, name: str) -> GlobalPosition:
    row = await conn.fetchrow(LOCK_CHECKPOINT, name)
    if row is None:  # the projection's first run: one round trip more, once
        await conn.execute(INIT_CHECKPOINT, name)
        row = await conn.fetchrow(LOCK_CHECKPOINT, name)
    return _position(row)


async def _set_checkpoint(conn: asyncpg.Connection, name: str, pos: GlobalPosition) -> None:
    await conn.execute(SET_CHECKPOINT, name, str(pos.tx_id), pos.position)


async def _apply(
    conn: asyncpg.Connection,
    projection: Projection,
    batch: Sequence[StoredEvent],
    tables: Mapping[str, str],
) -> int:
    relevant = projection.relevant(batch)
    return await projection.apply(conn, relevant, tables) if relevant else 0


async def catch_up(
    pool: asyncpg.Pool,
    store: ReadsLog,
    projection: Projection = executions.PROJECTION,
    *,
    batch_size: int = 500,
) -> int:
    """Apply every committed event after the checkpoint; returns how many were read.

    Each batch is read with `store.read_all` *before* its transaction opens (an
    open transaction of ours would hold back read_all's snapshot horizon), then
    applied with the checkpoint in one transaction; when the checkpoint moved
    meanwhile (another projector, a rebuild) the batch is dropped and re-read.
    `Unavailable` when PostgreSQL does not answer.
    """
    return (await _catch_up(pool, store, projection, batch_size, None))[0]


async def _catch_up(
    pool: asyncpg.Pool,
    store: ReadsLog,
    projection: Projection,
    batch_size: int,
    start: GlobalPosition | None,
) -> tuple[int, GlobalPosition]:
    """`catch_up` from ``start`` (None: the checkpoint as read now), which a projector
    passes as the checkpoint it last wrote: a query fewer per catch-up, and no risk,
    as each batch's transaction checks the checkpoint it locks. Returns how many
    events were read and the checkpoint they leave."""
    total = 0
    name, tables = projection.name, projection.identity()
    if start is None:
        with translate_errors():
            start = await get_checkpoint(pool, name)
    while True:
        batch = await store.read_all(start, batch_size)
        if not batch:
            return total, start
        with translate_errors():
            async with pool.acquire() as conn, conn.transaction():
                locked = await _lock_checkpoint(conn, name)
                if locked != start:
                    moved = True
                else:
                    moved = False
                    await _apply(conn, projection, batch, tables)
                    await _set_checkpoint(conn, name, batch[-1].global_position)
        if moved:  # another projector or a rebuild moved it: go on from there
            start = locked
            continue
        start = batch[-1].global_position
        total += len(batch)


async def catch_up_all(pool: asyncpg.Pool, store: EventStore) -> int:
    """`catch_up` of every registered projection; returns the events read in all."""
    return sum([await catch_up(pool, store, p) for p in PROJECTIONS.values()])


class Projector:
    """Runs one projection until `stop_event` is set (see module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ReadsLog,
        bus: Bus,
        *,
        projection: Projection = executions.PROJECTION,
        consumer: str | None = None,
        batch_size: int = 500,
        block_ms: int = 1000,
        catchup_interval: float = 5.0,
        retry_delay: float = 1.0,
        horizon_retry: float = 0.05,
    ) -> None:
        self.pool = pool
        self.store = store
        self.bus = bus
        self.projection = projection
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.catchup_interval = catchup_interval
        self.retry_delay = retry_delay
        # When announced events were not readable yet (another projector applied them,
        # or the read horizon lags a moment), look again this soon.
        self.horizon_retry = horizon_retry
        self.applied = 0  # events read and applied (observability, tests)
        # The checkpoint this projector last read or wrote (None: read it first).
        self._checkpoint: GlobalPosition | None = None

    async def ensure_groups(self) -> None:
        for stream in self.bus.events_streams():
            # "$": history is caught up from PostgreSQL, not re-read from the stream.
            await self.bus.ensure_group(stream, self.projection.group, start_id="$")

    async def catch_up(self) -> int:
        try:
            count, self._checkpoint = await _catch_up(
                self.pool, self.store, self.projection, self.batch_size, self._checkpoint
            )
        except BaseException:
            self._checkpoint = None  # (read again: a commit may or may not have happened)
            raise
        self.applied += count
        return count

    async def run(self, stop_event: asyncio.Event) -> None:
        """Catch up from PostgreSQL, then follow the streams; returns once
        `stop_event` is set (within about block_ms). A catch-up under way when the
        stop comes is finished (shielded)."""
        loop = asyncio.get_running_loop()
        next_catch_up = 0.0
        while not stop_event.is_set():
            try:
                if loop.time() >= next_catch_up:
                    await self.ensure_groups()
                    await self.catch_up()
                    next_catch_up = loop.time() + self.catchup_interval
                block = max(1, min(self.block_ms, int((next_catch_up - loop.time()) * 1000)))
                if not await self.bus.wait_for_entries(
                    self.projection.group, self.consumer, self.bus.events_streams(), block
                ):
                    continue
                # What rang is in PostgreSQL (the relay publishes only what read_all
                # returned), so this catch-up applies it.
                applied = await shielded(self.catch_up(), f"projector {self.projection.name}")
                if applied == 0:
                    next_catch_up = min(next_catch_up, loop.time() + self.horizon_retry)
            except asyncio.CancelledError:
                raise
            except (Unavailable, BusError) as exc:
                log.warning("projector %s: %r; retrying", self.projection.name, exc)
                next_catch_up = 0.0
                await sleep_or_stop(stop_event, self.retry_delay)


class ReadsLog(Protocol):
    """What a projector reads the log through: `EventStore`, or `SharedReads`."""

    async def read_all(self, after: GlobalPosition, limit: int) -> list[StoredEvent]: ...


class SharedReads:
    """`EventStore.read_all` for the projectors of one process: they follow the same log
    and, caught up alike, ask for the same events after the same checkpoint, each after
    the same doorbell. A read asked for while the same one (same position, same limit)
    is under way waits for it, and the last read's events are given again to the next
    asking from that position. A read given again may have been made a moment earlier
    than a fresh one: the events after a position in read_all's order only ever grow at
    their end (read_all returns nothing a transaction still in flight could precede), so
    it is a prefix of what a fresh read would return, and the projector goes on from its
    end. An empty read is never given again (it would hold a projector back)."""

    def __init__(self, store: ReadsLog) -> None:
        self._store = store
        self._reading: dict[tuple[GlobalPosition, int], asyncio.Future[list[StoredEvent]]] = {}
        self._last: tuple[tuple[GlobalPosition, int], list[StoredEvent]] | None = None
        self.asked = self.reads = 0  # reads asked for, and made (tests)

    async def read_all(self, after: GlobalPosition, limit: int) -> list[StoredEvent]:
        self.asked += 1
        key = (after, limit)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        under_way = self._reading.get(key)
        if under_way is not None:
            return await asyncio.shield(under_way)
        reading = asyncio.ensure_future(self._read(key))
        self._reading[key] = reading
        # A failure is this caller's (and its joiners') to raise, never left unretrieved.
        reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(reading)

    async def _read(self, key: tuple[GlobalPosition, int]) -> list[StoredEvent]:
        try:
            self.reads += 1
            events = await self._store.read_all(*key)
        finally:
            del self._reading[key]
        if events:
            self._last = (key, events)
        return events


def projectors(pool: asyncpg.Pool, store: EventStore, bus: Bus) -> list[Projector]:
    """One Projector per registered projection (the projector role runs them all), all
    reading the log through one `SharedReads`."""
    reads = SharedReads(store)
    return [Projector(pool, reads, bus, projection=p) for p in PROJECTIONS.values()]


# --- rebuild ---------------------------------------------------------------------------


# The fresh tables grow from nothing while statistics lag behind, so the planner keeps
# choosing sequential scans for the apply functions' key lookups (ANY of a batch's ids):
# a rebuild would slow down quadratically. Every lookup there has an index.
_INDEX_LOOKUPS = "SET LOCAL enable_seqscan = off"

# A table's storage parameters (an operator's fillfactor or autovacuum settings), which
# LIKE ... INCLUDING ALL does not copy.
_STORAGE_PARAMETERS = "SELECT reloptions FROM pg_class WHERE oid = $1::regclass"
_INDEXES = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = $1"""


def _index_shape(indexdef: str, index: str, table: str) -> str:
    """An index definition with its own and its table's names blanked out."""
    return indexdef.replace(f" INDEX {index} ON ", " INDEX _ ON ").replace(f".{table} ", "._ ")


async def _swap(conn: asyncpg.Connection, table: str, new: str) -> None:
    """Replace ``table`` by ``new``, keeping the old index names."""
    old_indexes = await conn.fetch(_INDEXES, table)
    new_indexes = await conn.fetch(_INDEXES, new)
    await conn.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    await conn.execute(f"ALTER TABLE {new} RENAME TO {table}")
    await conn.execute(f"DROP TABLE {table}_old")
    by_shape = {_index_shape(d, n, new): n for n, d in new_indexes}
    for index, indexdef in old_indexes:
        match = by_shape.get(_index_shape(indexdef, index, table))
        if match is not None and match != index:
            await conn.execute(f"ALTER INDEX {match} RENAME TO {index}")


async def rebuild(pool: asyncpg.Pool, name: str, *, batch_size: int = 2000) -> int:
    """Rebuild projection `name` from PostgreSQL without stopping the service.

    Fills `<table>_new` (LIKE <table> INCLUDING ALL, and its storage parameters) for
    each of its tables from the whole log in global order, then in one transaction:
    lock the checkpoint row and the live tables, apply what was committed meanwhile,
    swap the tables (index names kept) and set the checkpoint to the last event applied. Live
    projectors go on from that checkpoint; readers wait only for the swap.
    Returns the number of events read.
    """
    projection = projection_named(name)
    with translate_errors():
        return await _rebuild(pool, projection, name, batch_size)


async def _rebuild(pool: asyncpg.Pool, projection: Projection, name: str, batch_size: int) -> int:
    store = EventStore(pool)
    fresh = {t: f"{t}_new" for t in projection.tables}
    async with pool.acquire() as conn:
        for table, new in fresh.items():
            await conn.execute(f"DROP TABLE IF EXISTS {new}")
            await conn.execute(f"CREATE TABLE {new} (LIKE {table} INCLUDING ALL)")
            if parameters := await conn.fetchval(_STORAGE_PARAMETERS, table):
                await conn.execute(f"ALTER TABLE {new} SET ({', '.join(parameters)})")
    pos, total = GlobalPosition(), 0
    while batch := await store.read_all(pos, batch_size):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_INDEX_LOOKUPS)
            await _apply(conn, projection, batch, fresh)
        pos, total = batch[-1].global_position, total + len(batch)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_INDEX_LOOKUPS)
        await _lock_checkpoint(conn, name)
        for table in projection.tables:
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        while batch := await store.read_all(pos, batch_size):
            await _apply(conn, projection, batch, fresh)
            pos, total = batch[-1].global_position, total + len(batch)
        for table, new in fresh.items():
            await _swap(conn, table, new)
        await _set_checkpoint(conn, name, pos)
    log.info("projection %s rebuilt from %d events", name, total)
    return total
