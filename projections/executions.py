"""The executions read model (table `executions_view`): one row per execution.

Row rules, by event type (every other event only advances `last_seq`):
- `ExecutionStarted` (seq 1) creates the row: RUNNING, workflow, version, name,
  input, `started_at` = the event timestamp.
- `ExecutionSucceeded` -> SUCCEEDED + output; `ExecutionFailed` -> FAILED,
  `ExecutionTimedOut` -> TIMED_OUT, `ExecutionAborted` -> ABORTED, each with
  error and cause; `stopped_at` = the event timestamp. A terminal row absorbs
  anything later.

`evolve_row` is the pure fold; `apply_events` applies a batch of stored events
to the table idempotently (an event whose seq is <= the row's `last_seq` is a
duplicate and skipped) and in per-execution seq order: a seq gap is filled from
the `load_missing` callback (the event store), so the row never skips an event.
All SQL of the read model is in this module.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from engine.core import events as ev
from engine.core.events import CommittedEvent
from engine.loops import metrics
from projections.base import Projection

log = logging.getLogger(__name__)

TABLE = "executions_view"
TERMINAL_STATUS = {
    "ExecutionSucceeded": "SUCCEEDED",
    "ExecutionFailed": "FAILED",
    "ExecutionTimedOut": "TIMED_OUT",
    "ExecutionAborted": "ABORTED",
}
STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")


class ExecutionRow(msgspec.Struct, kw_only=True):
    """One row of executions_view. `input` and `output` are JSON text."""

    execution_id: UUID
    namespace: str
    workflow: str
    version: int
    name: str
    status: str
    input: str
    output: str | None = None
    error: str | None = None
    cause: str | None = None
    started_at: dt.datetime
    stopped_at: dt.datetime | None = None
    last_seq: int = 1


class _Started(msgspec.Struct):
    """The fields of ExecutionStarted the row needs; the input kept as stored."""

    input: msgspec.Raw = msgspec.Raw(b"null")
    workflow: str = ""
    version: int = 0
    name: str = ""
    namespace: str = "default"


class _Succeeded(msgspec.Struct):
    output: msgspec.Raw = msgspec.Raw(b"null")


_decode_started = msgspec.json.Decoder(_Started)
_decode_succeeded = msgspec.json.Decoder(_Succeeded)


def _json_text(value: msgspec.Raw) -> str:
    """A JSON value of an event, spelled as the event spells it (one rendering)."""
    return bytes(value).decode()


def evolve_row(row: ExecutionRow | None, event: CommittedEvent) -> ExecutionRow | None:
    """The row after `event`. The caller guarantees seq order (event.seq ==
    row.last_seq + 1, or seq 1 when there is no row); a row cannot begin with
    anything but ExecutionStarted, so that returns None."""
    if row is None:
        if event.type != "ExecutionStarted":
            return None
        started = _decode_started.decode(event.data)
        return ExecutionRow(
            execution_id=event.execution_id,
            namespace=started.namespace,
            workflow=started.workflow,
            version=started.version,
            name=started.name or str(event.execution_id),
            status="RUNNING",
            input=_json_text(started.input),
            started_at=event.timestamp,
            last_seq=event.seq,
        )
    row = msgspec.structs.replace(row, last_seq=event.seq)
    status = TERMINAL_STATUS.get(event.type)
    if status is None or row.status != "RUNNING":
        return row
    if event.type == "ExecutionSucceeded":
        output = _decode_succeeded.decode(event.data).output
        return msgspec.structs.replace(
            row, status=status, output=_json_text(output), stopped_at=event.timestamp
        )
    end = ev.decode_event(event.data)
    match end:
        case (
            ev.ExecutionFailed(error=error, cause=cause)
            | ev.ExecutionTimedOut(error=error, cause=cause)
            | ev.ExecutionAborted(error=error, cause=cause)
        ):
            return msgspec.structs.replace(
                row, status=status, error=error, cause=cause, stopped_at=event.timestamp
            )
    raise ValueError(f"{event.type} event decoded as {type(end).__name__}")


def fold(events: Iterable[CommittedEvent]) -> ExecutionRow | None:
    """Replay one execution's events (in seq order) into its row."""
    row: ExecutionRow | None = None
    for event in events:
        row = evolve_row(row, event)
    return row


# input and output are JSON text as the log spells it; error and cause are JSON strings
# (migration 0005: a text column refuses a NUL character, a json one keeps "\u0000").
_COLUMNS = (
    "execution_id, namespace, workflow, version, name, status, input::text, output::text,"
    " error::text, cause::text, started_at, stopped_at, last_seq"
)


def select_sql(table: str = TABLE) -> str:
    return f"SELECT {_COLUMNS} FROM {table}"


def select_batch_sql(table: str = TABLE) -> str:
    """The rows of a batch's executions (``$1``: their ids), locked for the batch."""
    return f"{select_sql(table)} WHERE execution_id = ANY($1::uuid[]) FOR UPDATE"


def _upsert_sql(table: str) -> str:
    """One statement for a whole batch of rows (arrays in, unnest): a rebuild writes
    thousands of rows per batch, several times faster than a statement per row."""
    return f"""
        INSERT INTO {table} (execution_id, namespace, workflow, version, name, status, input,
                             output, error, cause, started_at, stopped_at, last_seq)
        SELECT u.execution_id, u.namespace, u.workflow, u.version, u.name, u.status,
               u.input::json, u.output::json, u.error::json, u.cause::json, u.started_at,
               u.stopped_at,
               u.last_seq
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                    $12::timestamptz[], $13::int[])
             AS u(execution_id, namespace, workflow, version, name, status, input, output,
                  error, cause, started_at, stopped_at, last_seq)
        ON CONFLICT (execution_id) DO UPDATE SET
            status = EXCLUDED.status, output = EXCLUDED.output, error = EXCLUDED.error,
            cause = EXCLUDED.cause, stopped_at = EXCLUDED.stopped_at,
            last_seq = EXCLUDED.last_seq
        WHERE {table}.last_seq < EXCLUDED.last_seq
    """


def row_from_record(record: asyncpg.Record) -> ExecutionRow:
    return ExecutionRow(
        execution_id=record[0],
        namespace=record[1],
        workflow=record[2],
        version=record[3],
        name=record[4],
        status=record[5],
        input=record[6],
        output=record[7],
        error=_json_string(record[8]),
        cause=_json_string(record[9]),
        started_at=record[10],
        stopped_at=record[11],
        last_seq=record[12],
    )


def _json_string(text: str | None) -> str | None:
    return None if text is None else _decode_str.decode(text)


def _string_json(value: str | None) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


_decode_str = msgspec.json.Decoder(str)


def _row_args(row: ExecutionRow) -> tuple[Any, ...]:
    return (
        row.execution_id,
        row.namespace,
        row.workflow,
        row.version,
        row.name,
        row.status,
        row.input,
        row.output,
        _string_json(row.error),
        _string_json(row.cause),
        row.started_at,
        row.stopped_at,
        row.last_seq,
    )


# (execution_id, after_seq, upto_seq) -> that execution's events after_seq < seq <= upto_seq.
LoadMissing = Callable[[UUID, int, int], Awaitable[Sequence[CommittedEvent]]]


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    GAP = "gap"  # an earlier event of the execution is still missing


class ApplyResult(msgspec.Struct):
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0  # events left unapplied because an earlier one could not be loaded
    repaired: int = 0  # missing events loaded through load_missing and applied


async def apply_events(
    conn: asyncpg.Connection,
    events: Sequence[CommittedEvent],
    *,
    load_missing: LoadMissing | None = None,
    table: str = TABLE,
) -> ApplyResult:
    """Apply `events` to `table` inside the caller's transaction.

    Rows of the batch are locked (FOR UPDATE), folded in memory, written back
    with one upsert each. Duplicates (seq <= last_seq) are skipped; a seq gap is
    filled through `load_missing` when given, else the event is counted in
    `gaps` and left for a later catch-up.
    """
    result = ApplyResult()
    if not events:
        return result
    ids = list({e.execution_id for e in events})
    records = await conn.fetch(select_batch_sql(table), ids)
    rows: dict[UUID, ExecutionRow] = {r[0]: row_from_record(r) for r in records}
    before: dict[UUID, str] = {i: row.status for i, row in rows.items()}
    dirty: set[UUID] = set()
    for event in events:
        outcome = _step(rows, event)
        if outcome is Outcome.GAP and load_missing is not None:
            have = rows[event.execution_id].last_seq if event.execution_id in rows else 0
            for missing in await load_missing(event.execution_id, have, event.seq - 1):
                if _step(rows, missing) is Outcome.APPLIED:
                    result.repaired += 1
                    dirty.add(event.execution_id)
            outcome = _step(rows, event)
        if outcome is Outcome.APPLIED:
            result.applied += 1
            dirty.add(event.execution_id)
        elif outcome is Outcome.DUPLICATE:
            result.duplicates += 1
        else:
            result.gaps += 1
            log.warning(
                "executions projection: seq gap",
                extra={"execution_id": str(event.execution_id), "seq": event.seq},
            )
    if dirty:
        columns = list(zip(*(_row_args(rows[i]) for i in dirty), strict=True))
        await conn.execute(_upsert_sql(table), *columns)
        if table == TABLE:  # the live table, not a rebuild's
            _count_transitions({i: before.get(i) for i in dirty}, rows)
    return result


def _count_transitions(
    before: Mapping[UUID, str | None], rows: Mapping[UUID, ExecutionRow]
) -> None:
    """Count executions started and ended by this batch (once each: a duplicate event
    changes no row)."""
    for execution_id, was in before.items():
        row = rows[execution_id]
        if was is None:
            metrics.EXECUTIONS_STARTED.labels(row.workflow).inc()
        if row.status != "RUNNING" and was in (None, "RUNNING"):
            metrics.EXECUTIONS_ENDED.labels(row.workflow, row.status).inc()


def _step(rows: dict[UUID, ExecutionRow], event: CommittedEvent) -> Outcome:
    row = rows.get(event.execution_id)
    have = row.last_seq if row is not None else 0
    if event.seq <= have:
        return Outcome.DUPLICATE
    if event.seq != have + 1:
        return Outcome.GAP
    new = evolve_row(row, event)
    if new is None:
        return Outcome.GAP
    rows[event.execution_id] = new
    return Outcome.APPLIED


async def get_row(
    conn: asyncpg.Connection | asyncpg.Pool, execution_id: UUID, table: str = TABLE
) -> ExecutionRow | None:
    record = await conn.fetchrow(f"{select_sql(table)} WHERE execution_id = $1", execution_id)
    return None if record is None else row_from_record(record)


class Page(msgspec.Struct):
    rows: list[ExecutionRow]
    more: bool


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """Listing filters; time ranges are [after, before) and every bound is optional."""

    workflow: str | None = None
    version: int | None = None
    status: str | None = None
    name_prefix: str | None = None
    started_after: dt.datetime | None = None
    started_before: dt.datetime | None = None
    stopped_after: dt.datetime | None = None
    stopped_before: dt.datetime | None = None


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` in code-point
    (= UTF-8 byte, COLLATE "C") order; None when there is none."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates are not text
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


async def list_rows(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    namespace: str,
    workflow: str | None = None,
    status: str | None = None,
    limit: int,
    after: tuple[dt.datetime, UUID] | None,
    filters: Filters | None = None,
    ascending: bool = False,
    table: str = TABLE,
) -> Page:
    """Rows ordered by (started_at desc, execution_id asc), or exactly the reverse
    when ``ascending``, strictly after the keyset ``after`` when given. A row that
    arrives while a client pages lands before its cursor (newest first) or is met
    in order (oldest first): the keyset never shifts, so no row repeats and none
    that existed when paging began is missed."""
    f = filters or Filters()
    if workflow is not None or status is not None:
        f = msgspec.structs.replace(f, workflow=workflow or f.workflow, status=status or f.status)
    conditions = ["namespace = $1"]
    args: list[Any] = [namespace]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.workflow is not None:
        conditions.append(f"workflow = {arg(f.workflow)}")
    if f.version is not None:
        conditions.append(f"version = {arg(f.version)}")
    if f.status is not None:
        conditions.append(f"status = {arg(f.status)}")
    if f.name_prefix:
        conditions.append(f'name COLLATE "C" >= {arg(f.name_prefix)}')
        upper = prefix_upper_bound(f.name_prefix)
        if upper is not None:
            conditions.append(f'name COLLATE "C" < {arg(upper)}')
    if f.started_after is not None:
        conditions.append(f"started_at >= {arg(f.started_after)}")
    if f.started_before is not None:
        conditions.append(f"started_at < {arg(f.started_before)}")
    if f.stopped_after is not None:
        conditions.append(f"stopped_at >= {arg(f.stopped_after)}")
    if f.stopped_before is not None:
        conditions.append(f"stopped_at < {arg(f.stopped_before)}")
    if after is not None:
        ts, eid = arg(after[0]), arg(after[1])
        # The first comparison bounds the index scan; the rest breaks ties by id.
        if ascending:
            conditions.append(f"started_at >= {ts} AND (started_at > {ts} OR execution_id < {eid})")
        else:
            conditions.append(f"started_at <= {ts} AND (started_at < {ts} OR execution_id > {eid})")
    order = "started_at, execution_id DESC" if ascending else "started_at DESC, execution_id"
    where = " AND ".join(conditions)
    if f.name_prefix and await _few_named(conn, table, namespace, f.name_prefix):
        # Few matches: take them by the name index, then sort (see PREFIX_SORT_LIMIT).
        sql = (
            f"WITH m AS MATERIALIZED ({select_sql(table)} WHERE {where})"
            f" SELECT * FROM m ORDER BY {order} LIMIT {arg(limit + 1)}"
        )
    else:
        sql = f"{select_sql(table)} WHERE {where} ORDER BY {order} LIMIT {arg(limit + 1)}"
    ranged = f.name_prefix is not None or any(
        t is not None
        for t in (f.started_after, f.started_before, f.stopped_after, f.stopped_before)
    )
    records = await (_fetch_custom_plan(conn, sql, args) if ranged else conn.fetch(sql, *args))
    rows = [row_from_record(r) for r in records[:limit]]
    return Page(rows=rows, more=len(records) > limit)


# A name prefix matching at most this many executions is listed by the name index and
# sorted; a broader one by walking the start-time index. PostgreSQL's estimate of a text
# range is too coarse to choose between the two: walking the start-time index for a
# prefix with 100 matches reads the whole table (1 s at 1M rows, bench/read_side.py).
PREFIX_SORT_LIMIT = 10_000


async def _few_named(
    conn: asyncpg.Connection | asyncpg.Pool, table: str, namespace: str, prefix: str
) -> bool:
    upper = prefix_upper_bound(prefix)
    bound = 'AND name COLLATE "C" < $3' if upper is not None else "AND $3::text IS NULL"
    count: int = await conn.fetchval(
        f"""SELECT count(*) FROM (
                SELECT 1 FROM {table}
                WHERE namespace = $1 AND name COLLATE "C" >= $2 {bound} LIMIT $4) few""",
        namespace,
        prefix,
        upper,
        PREFIX_SORT_LIMIT + 1,
    )
    return count <= PREFIX_SORT_LIMIT


async def _fetch_custom_plan(
    conn: asyncpg.Connection | asyncpg.Pool, sql: str, args: list[Any]
) -> list[asyncpg.Record]:
    """Run ``sql`` planned for these very values. With a range filter the right plan
    depends on them (a narrow name prefix wants the name index, a broad one the
    started_at order); a prepared statement turns to a value-blind generic plan
    after five runs, which took a narrow prefix from 1 ms to 1 s over 1M rows."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await _fetch_custom_plan(acquired, sql, args)
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        result: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return result


# --- statistics -------------------------------------------------------------------------


class Percentiles(msgspec.Struct):
    """Durations in milliseconds (None when nothing in the window has ended)."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


def percentiles(values: Sequence[float] | None) -> Percentiles:
    if not values:
        return Percentiles()
    return Percentiles(*(round(v, 3) for v in values))


class ExecutionSummary(msgspec.Struct):
    total: int
    by_status: dict[str, int]
    duration_ms: Percentiles


_SUMMARY_COUNTS = f"""
SELECT status, count(*) FROM {TABLE}
WHERE namespace = $1 AND workflow = $2 AND started_at >= $3 AND started_at < $4
  AND ($5::int IS NULL OR version = $5)
GROUP BY status"""
# Exact percentiles over the ended executions started in the window (see stats.py).
_SUMMARY_DURATIONS = f"""
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (
    ORDER BY extract(epoch FROM stopped_at - started_at) * 1000)
FROM {TABLE}
WHERE namespace = $1 AND workflow = $2 AND started_at >= $3 AND started_at < $4
  AND ($5::int IS NULL OR version = $5) AND stopped_at IS NOT NULL"""


async def summary(
    conn: asyncpg.Connection | asyncpg.Pool,
    namespace: str,
    workflow: str,
    start: dt.datetime,
    end: dt.datetime,
    version: int | None = None,
) -> ExecutionSummary:
    """Executions of ``workflow`` started in [start, end): counts by status (every
    status present, zeros included) and duration percentiles of the ended ones."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in await conn.fetch(
        _SUMMARY_COUNTS, namespace, workflow, start, end, version
    ):
        counts[status] = count
    durations = await conn.fetchval(_SUMMARY_DURATIONS, namespace, workflow, start, end, version)
    return ExecutionSummary(
        total=sum(counts.values()), by_status=counts, duration_ms=percentiles(durations)
    )


# --- the projection ---------------------------------------------------------------------


async def _apply(conn: asyncpg.Connection, events: Sequence[Any], tables: Mapping[str, str]) -> int:
    result = await apply_events(conn, events, table=tables[TABLE])
    return result.applied


# Every event type: last_seq follows each event, which is how duplicates are recognised.
PROJECTION = Projection(name="executions", tables=(TABLE,), handles=None, apply=_apply)
