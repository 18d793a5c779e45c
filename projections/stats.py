"""The state statistics read model (tables `state_visits`, `state_stats_progress`).

One `state_visits` row per state entry (its *StateEntered event's seq), closed by
the first of:
- its *StateExited: ``succeeded``, or ``failed`` when a failure of the state was
  recorded and no retry followed it (the error was caught: the state failed, its
  Catch moved the branch on);
- a Fail state: ``failed`` on entry (it has no exit);
- the failure of its branch (a Map iteration or Parallel branch that failed or
  was cancelled): ``failed`` when the state's own failure is pending, else
  ``aborted``;
- the end of the execution: ``failed`` when it failed or timed out (the state
  in progress is what failed), ``aborted`` when it was stopped.
TaskFailed / TaskTimedOut / MapStateFailed / ParallelStateFailed count a failed
attempt; StateRetryScheduled counts a retry. A visit's duration runs from its
entry event's timestamp to its closing event's timestamp.

Percentiles: computed at query time with PostgreSQL's exact `percentile_cont`
over the visits entered in the requested window (index on
(namespace, workflow, entered_at)), rather than from pre-aggregated histograms:
any window, exact figures, and the cost is one index range scan of the window's
rows, which is fine up to some millions of visits per query. A histogram table
per (workflow, state, time bucket) is the step to take beyond that.

Idempotency: `state_stats_progress.last_seq` per execution; an event at or below
it is skipped. All SQL of this read model is in this module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from engine.adapters.store import StoredEvent
from engine.core import events as ev
from engine.core.state import child_frame_id
from projections.base import Projection
from projections.executions import Percentiles, percentiles

VISITS = "state_visits"
PROGRESS = "state_stats_progress"

ENTERED_TYPES = frozenset(c.__name__ for c in ev.ENTERED.values())
EXITED_TYPES = frozenset(c.__name__ for c in ev.EXITED.values())
FAILURE_TYPES = frozenset({"TaskFailed", "TaskTimedOut", "MapStateFailed", "ParallelStateFailed"})
BRANCH_END_TYPES = frozenset({"MapIterationFailed", "MapIterationSucceeded"})
TERMINAL_OUTCOME = {
    "ExecutionSucceeded": "succeeded",
    "ExecutionFailed": "failed",
    "ExecutionTimedOut": "failed",
    "ExecutionAborted": "aborted",
}
HANDLES = (
    ENTERED_TYPES
    | EXITED_TYPES
    | FAILURE_TYPES
    | BRANCH_END_TYPES
    | frozenset({"ExecutionStarted", "StateRetryScheduled", *TERMINAL_OUTCOME})
)


class Visit(msgspec.Struct, kw_only=True):
    execution_id: UUID
    entered_seq: int
    namespace: str
    workflow: str
    version: int
    frame: str
    state: str
    entered_at: dt.datetime
    ended_at: dt.datetime | None = None
    outcome: str = "running"
    failed_attempts: int = 0
    retries: int = 0
    pending_failure: bool = False


class Progress(msgspec.Struct, kw_only=True):
    execution_id: UUID
    namespace: str
    workflow: str
    version: int
    last_seq: int


_VISIT_COLUMNS = (
    "execution_id, entered_seq, namespace, workflow, version, frame, state, entered_at,"
    " ended_at, outcome, failed_attempts, retries, pending_failure"
)


def _select_progress(progress: str) -> str:
    return f"""
    SELECT execution_id, namespace, workflow, version, last_seq FROM {progress}
    WHERE execution_id = ANY($1::uuid[]) FOR UPDATE"""


def _select_open(visits: str) -> str:
    return f"""
    SELECT {_VISIT_COLUMNS} FROM {visits}
    WHERE execution_id = ANY($1::uuid[]) AND outcome = 'running' FOR UPDATE"""


# Both upserts take a whole batch as one JSON array of rows (the structs, encoded by
# msgspec): one statement per batch. As arrays (unnest), the driver checked and encoded
# each value of each row in Python's reach: 0.6-0.7 us a value, 13 a visit, more than
# PostgreSQL's parsing of the same rows as JSON costs the two of them together.
def _upsert_progress(progress: str) -> str:
    return f"""
    INSERT INTO {progress} (execution_id, namespace, workflow, version, last_seq)
    SELECT execution_id, namespace, workflow, version, last_seq
    FROM jsonb_to_recordset($1::jsonb)
         AS r(execution_id uuid, namespace text, workflow text, version int, last_seq int)
    ON CONFLICT (execution_id) DO UPDATE SET last_seq = EXCLUDED.last_seq
    WHERE {progress}.last_seq < EXCLUDED.last_seq"""


def _upsert_visit(visits: str) -> str:
    return f"""
    INSERT INTO {visits} ({_VISIT_COLUMNS})
    SELECT {_VISIT_COLUMNS}
    FROM jsonb_to_recordset($1::jsonb)
         AS r(execution_id uuid, entered_seq int, namespace text, workflow text, version int,
              frame text, state text, entered_at timestamptz, ended_at timestamptz,
              outcome text, failed_attempts int, retries int, pending_failure bool)
    ON CONFLICT (execution_id, entered_seq) DO UPDATE SET
        ended_at = EXCLUDED.ended_at, outcome = EXCLUDED.outcome,
        failed_attempts = EXCLUDED.failed_attempts, retries = EXCLUDED.retries,
        pending_failure = EXCLUDED.pending_failure"""


class _Fold:
    """The in-memory state of one batch: progress and open visits of its executions."""

    def __init__(self, progress: dict[UUID, Progress], open_visits: list[Visit]) -> None:
        self.progress = progress
        # Open visits by execution, then frame (a frame runs one state at a time).
        self.open: dict[UUID, dict[str, Visit]] = {}
        for v in open_visits:
            self.open.setdefault(v.execution_id, {})[v.frame] = v
        self.dirty: dict[tuple[UUID, int], Visit] = {}
        self.dirty_progress: set[UUID] = set()
        self.applied = 0

    def close(self, visit: Visit, outcome: str, at: dt.datetime) -> None:
        visit.outcome, visit.ended_at = outcome, at
        self.open.get(visit.execution_id, {}).pop(visit.frame, None)
        self.dirty[(visit.execution_id, visit.entered_seq)] = visit

    def close_under(
        self, eid: UUID, frame_prefix: str | None, at: dt.datetime, outcome: str
    ) -> None:
        """Close the open visits of an execution, or of the frames under a prefix.
        An ``aborted`` close counts as ``failed`` for a visit whose failure is pending."""
        for frame, visit in list(self.open.get(eid, {}).items()):
            if frame_prefix is not None and not (
                frame == frame_prefix or frame.startswith(frame_prefix + "/")
            ):
                continue
            closing = "failed" if outcome == "aborted" and visit.pending_failure else outcome
            self.close(visit, closing, at)

    def step(self, event: StoredEvent) -> None:
        eid = event.execution_id
        progress = self.progress.get(eid)
        if event.type == "ExecutionStarted":
            if progress is not None:
                return
            started = ev.decode_event(event.data)
            assert isinstance(started, ev.ExecutionStarted)
            self.progress[eid] = Progress(
                execution_id=eid,
                namespace=started.namespace,
                workflow=started.workflow,
                version=started.version,
                last_seq=event.seq,
            )
            self.dirty_progress.add(eid)
            self.applied += 1
            return
        if progress is None or event.seq <= progress.last_seq:
            return  # a duplicate, or an execution whose start this model never saw
        progress.last_seq = event.seq
        self.dirty_progress.add(eid)
        self.applied += 1
        data = _decode_fields(event.data)
        frame = data.frame
        at = event.timestamp
        if event.type in TERMINAL_OUTCOME:
            self.close_under(eid, None, at, TERMINAL_OUTCOME[event.type])
            return
        if event.type in BRANCH_END_TYPES:
            child = child_frame_id(frame, data.name, data.index)
            self.close_under(eid, child, at, "aborted")
            return
        visit = self.open.get(eid, {}).get(frame)
        if event.type in ENTERED_TYPES:
            if visit is not None:  # not expected: entries follow exits; keep the count honest
                self.close(visit, "failed" if visit.pending_failure else "succeeded", at)
            visit = Visit(
                execution_id=eid,
                entered_seq=event.seq,
                namespace=progress.namespace,
                workflow=progress.workflow,
                version=progress.version,
                frame=frame,
                state=data.name,
                entered_at=at,
            )
            self.open.setdefault(eid, {})[frame] = visit
            self.dirty[(eid, event.seq)] = visit
            if event.type == "FailStateEntered":
                self.close(visit, "failed", at)
            return
        if visit is None:
            return
        if event.type in EXITED_TYPES:
            self.close(visit, "failed" if visit.pending_failure else "succeeded", at)
        elif event.type in FAILURE_TYPES:
            visit.failed_attempts += 1
            visit.pending_failure = True
            if event.type in ("MapStateFailed", "ParallelStateFailed"):
                # Its branches or iterations are cancelled with it.
                branches = f"{frame}/{data.name}" if frame else data.name
                self.close_under(eid, branches, at, "aborted")
        elif event.type == "StateRetryScheduled":
            visit.retries += 1
            visit.pending_failure = False
        self.dirty[(eid, visit.entered_seq)] = visit


class _Fields(msgspec.Struct):
    """The fields of a state event this model reads."""

    frame: str = ""
    name: str = ""
    index: int = 0


_decode_struct = msgspec.json.Decoder(_Fields).decode


def _decode_fields(data: bytes) -> _Fields:
    """The fields, with state and frame names made storable: a text column refuses
    the NUL character, which a state name may contain (it is JSON), so this read
    model spells it U+FFFD; the event log and the other views keep it."""
    fields = _decode_struct(data)
    if "\x00" in fields.frame or "\x00" in fields.name:
        fields.frame = fields.frame.replace("\x00", "\ufffd")
        fields.name = fields.name.replace("\x00", "\ufffd")
    return fields


def _visit(record: asyncpg.Record) -> Visit:
    return Visit(**dict(record.items()))


async def apply_events(
    conn: asyncpg.Connection, events: Sequence[StoredEvent], tables: Mapping[str, str]
) -> int:
    """Apply handled events (in per-execution seq order) inside the caller's
    transaction; returns how many changed the model (duplicates are skipped)."""
    if not events:
        return 0
    visits, progress_table = tables[VISITS], tables[PROGRESS]
    ids = list({e.execution_id for e in events})
    progress = {
        r["execution_id"]: Progress(**dict(r.items()))
        for r in await conn.fetch(_select_progress(progress_table), ids)
    }
    open_visits = [_visit(r) for r in await conn.fetch(_select_open(visits), ids)]
    fold = _Fold(progress, open_visits)
    for event in events:
        fold.step(event)
    if fold.dirty:
        await conn.execute(_upsert_visit(visits), _rows(list(fold.dirty.values())))
    if fold.dirty_progress:
        rows = [fold.progress[i] for i in fold.dirty_progress]
        await conn.execute(_upsert_progress(progress_table), _rows(rows))
    return fold.applied


def _rows(rows: list[Visit] | list[Progress]) -> str:
    """``rows`` as the JSON array of objects the upserts read (jsonb_to_recordset)."""
    return _encode(rows).decode()


_encode = msgspec.json.Encoder().encode


PROJECTION = Projection(
    name="state_stats", tables=(VISITS, PROGRESS), handles=HANDLES, apply=apply_events
)


# --- queries ------------------------------------------------------------------------------


class StateStats(msgspec.Struct):
    name: str
    entered: int
    succeeded: int
    failed: int
    aborted: int
    running: int
    retried: int
    failed_attempts: int
    duration_ms: Percentiles


_STATE_STATS = f"""
SELECT state,
       count(*),
       count(*) FILTER (WHERE outcome = 'succeeded'),
       count(*) FILTER (WHERE outcome = 'failed'),
       count(*) FILTER (WHERE outcome = 'aborted'),
       count(*) FILTER (WHERE outcome = 'running'),
       coalesce(sum(retries), 0),
       coalesce(sum(failed_attempts), 0),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (
           ORDER BY extract(epoch FROM ended_at - entered_at) * 1000)
           FILTER (WHERE ended_at IS NOT NULL)
FROM {VISITS}
WHERE namespace = $1 AND workflow = $2 AND entered_at >= $3 AND entered_at < $4
  AND ($5::int IS NULL OR version = $5)
GROUP BY state
ORDER BY state"""


async def state_stats(
    conn: asyncpg.Connection | asyncpg.Pool,
    namespace: str,
    workflow: str,
    start: dt.datetime,
    end: dt.datetime,
    version: int | None = None,
) -> list[StateStats]:
    """Per state of ``workflow``, the visits entered in [start, end)."""
    rows: list[Any] = await conn.fetch(_STATE_STATS, namespace, workflow, start, end, version)
    return [
        StateStats(
            name=r[0],
            entered=r[1],
            succeeded=r[2],
            failed=r[3],
            aborted=r[4],
            running=r[5],
            retried=r[6],
            failed_attempts=r[7],
            duration_ms=percentiles(r[8]),
        )
        for r in rows
    ]
