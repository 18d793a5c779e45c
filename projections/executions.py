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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import msgspec

from engine import events as ev

log = logging.getLogger(__name__)

TABLE = "executions_view"
TERMINAL_STATUS = {
    "ExecutionSucceeded": "SUCCEEDED",
    "ExecutionFailed": "FAILED",
    "ExecutionTimedOut": "TIMED_OUT",
    "ExecutionAborted": "ABORTED",
}
STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")


class EventLike(Protocol):
    """What the read model needs of an event: engine.store.StoredEvent has it."""

    @property
    def execution_id(self) -> UUID: ...
    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def timestamp(self) -> dt.datetime: ...
    @property
    def data(self) -> bytes: ...


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


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def evolve_row(row: ExecutionRow | None, event: EventLike) -> ExecutionRow | None:
    """The row after `event`. The caller guarantees seq order (event.seq ==
    row.last_seq + 1, or seq 1 when there is no row); a row cannot begin with
    anything but ExecutionStarted, so that returns None."""
    if row is None:
        if event.type != "ExecutionStarted":
            return None
        started = ev.decode_event(event.data)
        assert isinstance(started, ev.ExecutionStarted)
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
    end = ev.decode_event(event.data)
    match end:
        case ev.ExecutionSucceeded(output=output):
            return msgspec.structs.replace(
                row, status=status, output=_json_text(output), stopped_at=event.timestamp
            )
        case (
            ev.ExecutionFailed(error=error, cause=cause)
            | ev.ExecutionTimedOut(error=error, cause=cause)
            | ev.ExecutionAborted(error=error, cause=cause)
        ):
            return msgspec.structs.replace(
                row, status=status, error=error, cause=cause, stopped_at=event.timestamp
            )
    raise ValueError(f"{event.type} event decoded as {type(end).__name__}")


def fold(events: Iterable[EventLike]) -> ExecutionRow | None:
    """Replay one execution's events (in seq order) into its row."""
    row: ExecutionRow | None = None
    for event in events:
        row = evolve_row(row, event)
    return row


_COLUMNS = (
    "execution_id, namespace, workflow, version, name, status, input::text, output::text,"
    " error, cause, started_at, stopped_at, last_seq"
)


def select_sql(table: str = TABLE) -> str:
    return f"SELECT {_COLUMNS} FROM {table}"


def _upsert_sql(table: str) -> str:
    return f"""
        INSERT INTO {table} (execution_id, namespace, workflow, version, name, status, input,
                             output, error, cause, started_at, stopped_at, last_seq)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12, $13)
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
        error=record[8],
        cause=record[9],
        started_at=record[10],
        stopped_at=record[11],
        last_seq=record[12],
    )


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
        row.error,
        row.cause,
        row.started_at,
        row.stopped_at,
        row.last_seq,
    )


# (execution_id, after_seq, upto_seq) -> that execution's events after_seq < seq <= upto_seq.
LoadMissing = Callable[[UUID, int, int], Awaitable[Sequence[EventLike]]]


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
    events: Sequence[EventLike],
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
    records = await conn.fetch(
        f"{select_sql(table)} WHERE execution_id = ANY($1::uuid[]) FOR UPDATE", ids
    )
    rows: dict[UUID, ExecutionRow] = {r[0]: row_from_record(r) for r in records}
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
        await conn.executemany(_upsert_sql(table), [_row_args(rows[i]) for i in dirty])
    return result


def _step(rows: dict[UUID, ExecutionRow], event: EventLike) -> Outcome:
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


async def list_rows(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    namespace: str,
    workflow: str | None,
    status: str | None,
    limit: int,
    after: tuple[dt.datetime, UUID] | None,
    table: str = TABLE,
) -> Page:
    """Rows ordered by (started_at desc, execution_id asc), strictly after the
    keyset `after` when given: rows started later than the cursor never shift
    a page boundary, so paging stays correct while executions arrive."""
    conditions = ["namespace = $1"]
    args: list[Any] = [namespace]
    if workflow is not None:
        args.append(workflow)
        conditions.append(f"workflow = ${len(args)}")
    if status is not None:
        args.append(status)
        conditions.append(f"status = ${len(args)}")
    if after is not None:
        args.extend(after)
        ts, eid = f"${len(args) - 1}", f"${len(args)}"
        # started_at <= ts bounds the index scan; the rest breaks ties by id.
        conditions.append(f"started_at <= {ts} AND (started_at < {ts} OR execution_id > {eid})")
    args.append(limit + 1)
    sql = (
        f"{select_sql(table)} WHERE {' AND '.join(conditions)}"
        f" ORDER BY started_at DESC, execution_id LIMIT ${len(args)}"
    )
    records = await conn.fetch(sql, *args)
    rows = [row_from_record(r) for r in records[:limit]]
    return Page(rows=rows, more=len(records) > limit)
