"""PostgreSQL event store: the source of truth (DESIGN "How an execution moves").

Every SQL statement of the store is a named constant in the block below. asyncpg
errors are translated here, once, into the engine.errors tree: every call goes
through the `_fetch`/`_fetchrow`/`_fetchval`/`_execute`/`_transaction` wrappers,
which turn a server that does not answer into `Unavailable`
(engine.adapters.postgres); statement errors become what they mean below. JSON crosses the
boundary as text (``$n::text::json`` in, ``::text`` out), so the store works on
any pool whatever JSON codecs its owner registered.

JSON is kept as sent (migration 0005): event data, execution inputs and definitions
are `json` columns, which store the text exactly as written (key order, number
spelling, duplicate keys, ``\u0000``), where jsonb re-ordered keys and rewrote
numbers. What the store writes is compact (no insignificant whitespace), and the
migration wrote the rows it converted from jsonb compact too (their original key
order was already lost), so what is read is always compact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import msgspec

from engine.adapters.postgres import PoolQueries, translate_errors
from engine.core.events import TERMINAL_EVENT_TYPES
from engine.errors import (
    ConcurrencyError,
    ExecutionNameConflict,
    InvalidData,
    InvalidRequest,
    SteplogError,
    Unavailable,
)

NOTIFY_CHANNEL = "steplog_events"
STANDARD = "STANDARD"

# ---------------------------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------------------------

_EVENT_COLUMNS = "execution_id, seq, position, type, data::text AS data, recorded_at, tx_id"

# Workflows. The workflows row is locked FOR UPDATE so concurrent puts of one workflow
# serialise and never both create "the next" version.
INSERT_WORKFLOW = """
INSERT INTO workflows (namespace, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"""
LOCK_WORKFLOW = "SELECT 1 FROM workflows WHERE namespace = $1 AND name = $2 FOR UPDATE"
SELECT_LATEST_VERSION = """
SELECT namespace, name, version, type, definition::text AS definition, definition_hash, created_at
FROM workflow_versions WHERE namespace = $1 AND name = $2
ORDER BY version DESC LIMIT 1"""
SELECT_VERSION = """
SELECT namespace, name, version, type, definition::text AS definition, definition_hash, created_at
FROM workflow_versions WHERE namespace = $1 AND name = $2 AND version = $3"""
INSERT_VERSION = """
INSERT INTO workflow_versions (namespace, name, version, definition, definition_hash, type)
VALUES ($1, $2, $3, $4::text::json, $5, $6)
RETURNING namespace, name, version, type, definition::text AS definition, definition_hash, created_at"""
LIST_LATEST_VERSIONS = """
SELECT DISTINCT ON (name)
       namespace, name, version, type, definition::text AS definition, definition_hash, created_at
FROM workflow_versions WHERE namespace = $1
ORDER BY name, version DESC"""

# Executions. One statement (so one implicit transaction and one round trip) inserts the
# executions row and, only when that insert happened, event seq 1 and the notification.
# ON CONFLICT DO NOTHING waits for a concurrent inserter of the same name to finish, so
# the follow-up SELECT sees its committed row.
# The execution, its ExecutionStarted (seq 1) and, when the caller decided them already,
# the events after it (seq 2 ...: the first decision, engine.service) with its timers, in
# one statement: one commit. Nothing when the name exists (ON CONFLICT DO NOTHING).
# With $13 (the caller's version must be the workflow's latest), nothing either when a
# newer version exists (or none does); the second column says which is latest.
START_EXECUTION = f"""
WITH latest AS (
    SELECT max(version) AS version FROM workflow_versions WHERE namespace = $2 AND name = $3
), started AS (
    INSERT INTO executions
        (execution_id, namespace, workflow, version, name, input, input_hash, started_at)
    SELECT $1::uuid, $2::text, $3::text, $4::int, $5::text, $6::text::json, $7::text,
           $8::timestamptz
    FROM latest WHERE NOT $13::bool OR latest.version = $4::int
    ON CONFLICT (namespace, workflow, name) DO NOTHING
    RETURNING execution_id, started_at
), first_events AS (
    INSERT INTO events (execution_id, seq, type, data, recorded_at)
    SELECT s.execution_id, u.ord::int, u.type, u.data::json, s.started_at
    FROM started s
    CROSS JOIN unnest($9::text[], $10::text[]) WITH ORDINALITY AS u(type, data, ord)
    ORDER BY u.ord
    RETURNING seq, position
), set_timers AS (
    INSERT INTO timers (timer_id, execution_id, due_at)
    SELECT t.timer_id, s.execution_id, t.due_at
    FROM started s CROSS JOIN unnest($11::text[], $12::timestamptz[]) AS t(timer_id, due_at)
    ON CONFLICT (timer_id) DO UPDATE SET execution_id = EXCLUDED.execution_id,
                                         due_at = EXCLUDED.due_at
), notified AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM (SELECT 1 FROM first_events LIMIT 1) one
)
SELECT (SELECT position FROM first_events LEFT JOIN notified ON true WHERE seq = 1),
       (SELECT version FROM latest) AS latest"""
# The row of running_executions (migration 0007) an execution's start and end count in,
# with the namespace: the key every statement that appends to several executions orders
# its rows by (then execution and seq), so that two such transactions (a batch of starts,
# a batch of appends, in any processes) lock those counting rows in one order and never
# wait for each other crosswise (a deadlock).
RUNNING_SHARD = "abs(hashtext({}::text)) % 16"
# Many starts of the latest versions (StartCommit) in one statement: each execution, its
# events (seq 1 ...) and timers, for those whose version is the latest and whose name is
# new; the ids started and their seq 1's position. Executions go in in name order and
# events in counting-row order (RUNNING_SHARD), so two batches never wait for each
# other's names or counting rows crosswise.
START_EXECUTIONS = f"""
WITH req AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[],
                         $6::text[], $7::text[], $8::timestamptz[])
        AS r(execution_id, namespace, workflow, version, name, input, input_hash, started_at)
), started AS (
    INSERT INTO executions
        (execution_id, namespace, workflow, version, name, input, input_hash, started_at)
    SELECT r.execution_id, r.namespace, r.workflow, r.version, r.name, r.input::json,
           r.input_hash, r.started_at
    FROM req r
    WHERE r.version = (SELECT max(w.version) FROM workflow_versions w
                       WHERE w.namespace = r.namespace AND w.name = r.workflow)
    ORDER BY r.namespace, r.workflow, r.name
    ON CONFLICT (namespace, workflow, name) DO NOTHING
    RETURNING execution_id, started_at
), first_events AS (
    INSERT INTO events (execution_id, seq, type, data, recorded_at)
    SELECT s.execution_id, e.seq, e.type, e.data::json, s.started_at
    FROM unnest($9::uuid[], $10::int[], $11::text[], $12::text[])
        WITH ORDINALITY AS e(execution_id, seq, type, data, ord)
    JOIN started s USING (execution_id)
    JOIN req r USING (execution_id)
    ORDER BY r.namespace, {RUNNING_SHARD.format("e.execution_id")}, e.execution_id, e.ord
    RETURNING execution_id, seq, position
), set_timers AS (
    INSERT INTO timers (timer_id, execution_id, due_at)
    SELECT t.timer_id, s.execution_id, t.due_at
    FROM unnest($13::uuid[], $14::text[], $15::timestamptz[]) AS t(execution_id, timer_id, due_at)
    JOIN started s USING (execution_id)
    ON CONFLICT (timer_id) DO UPDATE SET execution_id = EXCLUDED.execution_id,
                                         due_at = EXCLUDED.due_at
), notified AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM (SELECT 1 FROM first_events LIMIT 1) one
)
SELECT f.execution_id, f.position FROM first_events f LEFT JOIN notified ON true
WHERE f.seq = 1"""
SELECT_EXECUTION_BY_NAME = """
SELECT execution_id, namespace, workflow, version, name, input::text AS input, input_hash,
       started_at
FROM executions WHERE namespace = $1 AND workflow = $2 AND name = $3"""
SELECT_EXECUTION = """
SELECT execution_id, namespace, workflow, version, name, input::text AS input, input_hash,
       started_at
FROM executions WHERE execution_id = $1 AND ($2::text IS NULL OR namespace = $2)"""
# Executions in id order (a stable keyset for long scans such as `steplog verify`).
LIST_EXECUTIONS = """
SELECT execution_id, namespace, workflow, version, name, input::text AS input, input_hash,
       started_at
FROM executions
WHERE namespace = $1 AND ($2::text IS NULL OR workflow = $2) AND execution_id > $3
ORDER BY execution_id LIMIT $4"""
# The last event of an execution is terminal exactly when the execution has ended.
RUNNING_EXECUTIONS = """
SELECT x.execution_id
FROM executions x
CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last
WHERE ($1::text IS NULL OR x.namespace = $1) AND last.type <> ALL($2::text[])
ORDER BY x.started_at, x.execution_id"""

# Events. One statement appends the batch (unnest, ordered so positions follow seq), applies
# the timer changes and notifies. The EXISTS guard refuses an expected_seq the execution has
# not reached (no gaps); an expected_seq someone else already passed collides on the
# primary key. Timer changes run only when the events were inserted.
APPEND = f"""
WITH appended AS (
    INSERT INTO events (execution_id, seq, type, data, recorded_at)
    SELECT $1, $2 + u.ord, u.type, u.data::json, u.recorded_at
    FROM unnest($3::text[], $4::text[], $5::timestamptz[])
         WITH ORDINALITY AS u(type, data, recorded_at, ord)
    WHERE $2 = 0 OR EXISTS (SELECT 1 FROM events WHERE execution_id = $1 AND seq = $2)
    ORDER BY u.ord
    RETURNING seq, position, tx_id
), cancelled AS (
    DELETE FROM timers
    WHERE timer_id = ANY($6::text[]) AND timer_id <> ALL($7::text[])
      AND EXISTS (SELECT 1 FROM appended)
), set_timers AS (
    INSERT INTO timers (timer_id, execution_id, due_at)
    SELECT t.timer_id, $1, t.due_at FROM unnest($7::text[], $8::timestamptz[]) AS t(timer_id, due_at)
    WHERE EXISTS (SELECT 1 FROM appended)
    ON CONFLICT (timer_id) DO UPDATE SET execution_id = EXCLUDED.execution_id,
                                         due_at = EXCLUDED.due_at
), notified AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM (SELECT 1 FROM appended LIMIT 1) one
)
SELECT appended.seq, appended.position, appended.tx_id
FROM appended LEFT JOIN notified ON true
ORDER BY appended.seq"""
# Group commit: the appends of many executions in one statement (so one transaction, one
# round trip and one WAL flush). Each request (an execution, its expected seq) is checked on
# its own: only the requests whose execution has an event at expected_seq and none after it
# are inserted, the others are left out (their callers get a ConcurrencyError) without
# failing the rest. A writer that commits the same seq between this statement's snapshot
# and its insert still collides on the primary key and fails the whole statement: the store
# then appends each request on its own (`EventStore.append_batch`). Rows are inserted in
# (namespace, counting row, execution_id, seq) order (RUNNING_SHARD), so two batches
# inserting the same keys or counting in the same rows wait for each other in one order
# (no deadlock), and positions follow seq per execution. Timer changes apply to
# the executions whose events were inserted.
APPEND_BATCH = f"""
WITH request AS (
    SELECT r.execution_id, r.expected FROM unnest($1::uuid[], $2::int[]) AS r(execution_id, expected)
), ready AS (
    SELECT r.execution_id FROM request r
    WHERE (r.expected = 0
           OR EXISTS (SELECT 1 FROM events e WHERE e.execution_id = r.execution_id AND e.seq = r.expected))
      AND NOT EXISTS (
          SELECT 1 FROM events e WHERE e.execution_id = r.execution_id AND e.seq = r.expected + 1)
), appended AS (
    INSERT INTO events (execution_id, seq, type, data, recorded_at)
    SELECT u.execution_id, u.seq, u.type, u.data::json, u.recorded_at
    FROM unnest($3::uuid[], $4::int[], $5::text[], $6::text[], $7::timestamptz[])
         AS u(execution_id, seq, type, data, recorded_at)
    LEFT JOIN executions x USING (execution_id)  -- (its namespace: the order only)
    WHERE u.execution_id IN (SELECT execution_id FROM ready)
    ORDER BY x.namespace, {RUNNING_SHARD.format("u.execution_id")}, u.execution_id, u.seq
    RETURNING execution_id, seq, position, tx_id
), cancelled AS (
    DELETE FROM timers t USING unnest($8::uuid[], $9::text[]) AS c(execution_id, timer_id)
    WHERE t.timer_id = c.timer_id AND c.timer_id <> ALL($11::text[])
      AND c.execution_id IN (SELECT execution_id FROM appended)
), set_timers AS (
    INSERT INTO timers (timer_id, execution_id, due_at)
    SELECT t.timer_id, t.execution_id, t.due_at
    FROM unnest($10::uuid[], $11::text[], $12::timestamptz[]) AS t(execution_id, timer_id, due_at)
    WHERE t.execution_id IN (SELECT execution_id FROM appended)
    ON CONFLICT (timer_id) DO UPDATE SET execution_id = EXCLUDED.execution_id,
                                         due_at = EXCLUDED.due_at
), notified AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM (SELECT 1 FROM appended LIMIT 1) one
)
SELECT appended.execution_id, appended.seq, appended.position, appended.tx_id
FROM appended LEFT JOIN notified ON true
ORDER BY appended.execution_id, appended.seq"""
# Timer changes without events (an append of nothing still honours them).
CANCEL_TIMERS = "DELETE FROM timers WHERE timer_id = ANY($1::text[])"
UPSERT_TIMERS = """
INSERT INTO timers (timer_id, execution_id, due_at)
SELECT t.timer_id, $1, t.due_at FROM unnest($2::text[], $3::timestamptz[]) AS t(timer_id, due_at)
ON CONFLICT (timer_id) DO UPDATE SET execution_id = EXCLUDED.execution_id, due_at = EXCLUDED.due_at"""
LOAD_FORWARD = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE execution_id = $1 AND seq > $2 AND seq <= $3
ORDER BY seq LIMIT $4"""
# What a replay folds: each event's data and time only (no StoredEvent per row).
LOAD_FOR_FOLD = """
SELECT data::text, recorded_at FROM events
WHERE execution_id = $1 AND seq > $2 AND seq <= $3
ORDER BY seq"""
# The events of many executions, each after its own seq (the engine's batch of triggers).
# A lateral subquery with an OFFSET is never flattened into a join, so each
# execution is one range scan of events' primary key whatever the planner's statistics
# say: as a plain join, a table that autovacuum has not analyzed yet (a new database's
# first minute, a burst of new executions) was read whole by a hash join for every batch.
LOAD_MANY = """
SELECT a.execution_id, e.seq, e.position, e.type, e.data, e.recorded_at, e.tx_id
FROM unnest($1::uuid[], $2::int[]) AS a(execution_id, after_seq)
CROSS JOIN LATERAL (
    SELECT seq, position, type, data::text AS data, recorded_at, tx_id FROM events
    WHERE execution_id = a.execution_id AND seq > a.after_seq OFFSET 0
) e
ORDER BY a.execution_id, e.seq"""
LOAD_BACKWARD = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE execution_id = $1 AND seq > $2 AND seq <= $3
ORDER BY seq DESC LIMIT $4"""
# Commit-safe global order. A position (identity) is taken when a row is inserted, not when
# its transaction commits, so a tail reader that only remembered "the largest position seen"
# would skip a smaller position committed later, forever. Instead events are ordered by the
# inserting transaction id, then position, and only rows whose transaction id is below the
# xmin of the current snapshot are returned: every transaction below xmin has finished
# (committed or rolled back), and every transaction still in flight or yet to start has an
# id >= xmin, so nothing can later appear before the last row returned. The price: one long
# transaction anywhere in the cluster holds the reader back until it ends.
# (The technique of the Python eventsourcing library's Postgres recorder and of Marten.)
READ_ALL = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE (tx_id, position) > ($1::text::xid8, $2::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, position
LIMIT $3"""

DUE_TIMERS = """
SELECT timer_id, execution_id, due_at FROM timers WHERE due_at <= $1
ORDER BY due_at, timer_id LIMIT $2"""
DELETE_TIMER = "DELETE FROM timers WHERE timer_id = $1"
# Timers recorded, and how long ago the earliest came due (by PostgreSQL's clock).
TIMER_STATS = """
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(due_at)), 0)::float8 FROM timers"""
# Timer firing across processes (migration 0004). A timer is claimable when it is due, was
# not yet fired for this due time, and no live lease holds it. SKIP LOCKED lets concurrent
# timer services take disjoint batches; the lease covers the window between this commit and
# MARK_TIMERS_FIRED, so a firer that dies in between is replaced once the lease expires.
# "Due" and the lease are by PostgreSQL's clock (DESIGN invariant 8), read once here, so a
# firer whose own clock runs ahead fires nothing early; $1, when not null, stands in for it
# (tests that move time).
# The clock is compared as a scalar subquery (an InitPlan), which PostgreSQL can use as
# the bound of an index scan on due_at; joined in from the CTE it could not, and every
# poll read every waiting timer (165 ms with 100,000 waiting, bench/waits.py).
CLAIM_DUE_TIMERS = """
WITH clock AS (SELECT coalesce($1::timestamptz, clock_timestamp()) AS now)
UPDATE timers t SET claimed_until = clock.now + make_interval(secs => $3)
FROM clock, (
    SELECT timer_id FROM timers
    WHERE due_at <= (SELECT now FROM clock) AND fired_due IS DISTINCT FROM due_at
      AND (claimed_until IS NULL OR claimed_until < (SELECT now FROM clock))
    ORDER BY due_at, timer_id LIMIT $2
    FOR UPDATE OF timers SKIP LOCKED
) due
WHERE t.timer_id = due.timer_id
RETURNING t.timer_id, t.execution_id, t.due_at, t.claimed_until, clock.now AS claimed_at"""
# Only for the due time that was fired, and only while the claim is still the caller's
# (claimed_until is its token): a timer moved meanwhile stays due for its new time, and one
# re-armed by recovery meanwhile (its trigger may have been flushed) stays due.
MARK_TIMERS_FIRED = """
UPDATE timers t SET fired_due = f.due_at, claimed_until = NULL
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[])
     AS f(timer_id, due_at, claimed_until)
WHERE t.timer_id = f.timer_id AND t.due_at = f.due_at AND t.claimed_until = f.claimed_until"""
# After Redis lost its data, the triggers of fired timers may be gone: fire them again.
REARM_TIMERS = """
UPDATE timers SET fired_due = NULL, claimed_until = NULL
WHERE fired_due IS NOT NULL OR claimed_until IS NOT NULL"""
# Which of the given executions have ended (their last event is terminal).
ENDED_EXECUTIONS = """
SELECT x.execution_id
FROM unnest($1::uuid[]) AS x(execution_id)
CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last
WHERE last.type = ANY($2::text[])"""
PING = "SELECT 1"
# A statement's own transaction is read-only when the server is a standby (in recovery,
# e.g. after a failover to a replica) or default_transaction_read_only is on: the cheap
# question "would a write be refused?", asked without writing.
READ_ONLY = "SELECT current_setting('transaction_read_only') = 'on'"

_MAX_SEQ = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append: ``data`` is the encoded event JSON (engine.core.events.encode_event)."""

    type: str
    data: bytes
    timestamp: datetime


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """A committed event. ``position`` is global insertion order; ``tx_id`` is the id of the
    transaction that wrote it. ``(tx_id, position)`` is its place in `EventStore.read_all`
    order (see `global_position`). ``data`` is the event JSON exactly as appended (events
    converted from jsonb by migration 0005: compact, in the key order jsonb left).
    Untracked by the garbage collector (``gc=False``: its fields hold no references that
    could form a cycle), so the 10,000 of a long replay add nothing to its scans."""

    execution_id: UUID
    seq: int
    position: int
    type: str
    data: bytes
    timestamp: datetime
    tx_id: int = 0

    @property
    def global_position(self) -> GlobalPosition:
        return GlobalPosition(self.tx_id, self.position)


class GlobalPosition(msgspec.Struct, frozen=True, order=True):
    """A place in `EventStore.read_all` order; ``GlobalPosition(0, 0)`` is the beginning."""

    tx_id: int = 0
    position: int = 0


class WorkflowVersion(msgspec.Struct, frozen=True):
    namespace: str
    name: str
    version: int
    definition: dict[str, Any]
    created_at: datetime
    # STANDARD or EXPRESS, as Step Functions' state machine types.
    type: str = "STANDARD"


class ExecutionRecord(msgspec.Struct, frozen=True):
    """An execution's start. ``input_json`` is the input as kept (`json_as_sent`)."""

    execution_id: UUID
    namespace: str
    workflow: str
    version: int
    name: str
    input_json: bytes
    started_at: datetime


class TimerSpec(msgspec.Struct, frozen=True):
    """A timer to set: fire a `timer` trigger for the owning execution at ``due``."""

    timer_id: str
    due: datetime


class AppendRequest(msgspec.Struct, frozen=True):
    """One execution's part of `EventStore.append_batch`: what `EventStore.append` takes."""

    execution_id: UUID
    expected_seq: int
    events: Sequence[NewEvent]
    set_timers: Sequence[TimerLike] = ()
    cancel_timers: Sequence[str] = ()


class StartRequest(msgspec.Struct, frozen=True):
    """One start of `EventStore.start_batch`: what `EventStore.start_execution` takes
    (of the workflow's latest version)."""

    namespace: str
    workflow: str
    version: int
    execution_id: UUID
    name: str
    input_json: bytes
    started: NewEvent
    then: Sequence[NewEvent] = ()
    set_timers: Sequence[TimerLike] = ()


class TimerLike(Protocol):
    """Anything with a ``timer_id`` and a ``due`` (e.g. decide's TimerRequest, `TimerSpec`)."""

    @property
    def timer_id(self) -> str: ...
    @property
    def due(self) -> datetime: ...


class DueTimer(msgspec.Struct, frozen=True):
    timer_id: str
    execution_id: UUID
    due_at: datetime
    # Set by `EventStore.claim_due_timers`: the claim's lease end, also its token, and
    # the time it was claimed at (PostgreSQL's clock, or the ``now`` given).
    claimed_until: datetime | None = None
    claimed_at: datetime | None = None


_decode_dict = msgspec.json.Decoder(dict[str, Any])
_decode_any = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()
_encode_sorted = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: equal values give equal bytes."""
    return _encode_sorted.encode(value)


def definition_json(definition: dict[str, Any]) -> bytes:
    """A definition as the store keeps it: compact, keys in the order registered."""
    return _encode.encode(definition)


class NotLatestVersion(Exception):
    """`EventStore.start_execution` with ``latest_only``: the version given is no longer
    (or not) the workflow's latest; nothing was written."""

    def __init__(self, latest: int | None) -> None:
        super().__init__(f"the workflow's latest version is {latest}")
        self.latest = latest


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> None:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _DuplicateKey
    return None


def _has_duplicate_keys(document: bytes) -> bool:
    try:
        json.loads(
            document,
            object_pairs_hook=_refuse_duplicates,
            parse_int=len,
            parse_float=len,
        )
    except _DuplicateKey:
        return True
    except (ValueError, RecursionError):  # already decoded once: nothing else to find
        return False
    return False


def json_as_sent(value: Any) -> bytes:
    """The JSON the store keeps of an execution input.

    A ``msgspec.Raw`` (the client's bytes) is kept as sent: key order, number
    spelling (``1e2``, ``1.50``) and string escapes exactly, only the insignificant
    whitespace removed. `InvalidRequest` when it is not JSON or holds a number no
    double can represent. A document with a duplicate key is kept as its decoded value
    instead (the last of each key wins, as for the execution reading it), so what is
    shown is what runs. Any other value is encoded with its keys in their order.
    """
    if not isinstance(value, msgspec.Raw):
        return _encode.encode(value)
    raw = bytes(value)
    try:
        decoded = _decode_any.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidRequest(f"execution input is not valid JSON: {exc}") from None
    kept = msgspec.json.format(raw, indent=-1)
    encoded = _encode.encode(decoded)
    # Equal when nothing was spelled otherwise than msgspec spells it (the usual case).
    if kept != encoded and _has_duplicate_keys(kept):
        return encoded
    return kept


def _compact_document(document: bytes) -> bytes:
    try:
        return msgspec.json.format(document, indent=-1)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidRequest(f"execution input is not valid JSON: {exc}") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_TEXT_HASH = "text:"


def input_hash(input_json: bytes) -> str:
    """Hash of an execution input as stored (compact `json_as_sent`): two starts of one
    name are the same start when their inputs are the same JSON text up to whitespace."""
    return _TEXT_HASH + _sha256(input_json)


def _same_input(stored_hash: str, input_json: bytes) -> bool:
    """Whether an execution's recorded input hash is that of ``input_json``. Executions
    started before migration 0005 carry a bare hash of the input's value with sorted
    keys (jsonb could not tell key orders apart): they are compared that way."""
    if stored_hash.startswith(_TEXT_HASH):
        return stored_hash == input_hash(input_json)
    try:
        return stored_hash == _sha256(canonical_json(_decode_any.decode(input_json)))
    except (msgspec.DecodeError, RecursionError):
        return False


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"JSON is not valid UTF-8: {exc}") from None


def _stored(row: asyncpg.Record) -> StoredEvent:
    # By index (the columns of _EVENT_COLUMNS, in order): a lookup by name costs more, and
    # a replay makes one of these per event.
    return StoredEvent(row[0], row[1], row[2], row[3], row[4].encode(), row[5], row[6])


def _batch_arguments(requests: Sequence[AppendRequest]) -> tuple[list[Any], ...]:
    """APPEND_BATCH's arrays: requests, their events (with seq), cancelled and set timers.
    `InvalidRequest` when an event is not UTF-8 text."""
    events: tuple[list[Any], ...] = ([], [], [], [], [])
    cancels: tuple[list[Any], list[Any]] = ([], [])
    sets: tuple[list[Any], ...] = ([], [], [])
    for r in requests:
        for offset, e in enumerate(r.events, 1):
            for column, value in zip(
                events,
                (r.execution_id, r.expected_seq + offset, e.type, _text(e.data), e.timestamp),
                strict=True,
            ):
                column.append(value)
        for timer_id in r.cancel_timers:
            cancels[0].append(r.execution_id)
            cancels[1].append(timer_id)
        for t in r.set_timers:
            for column, value in zip(sets, (r.execution_id, t.timer_id, t.due), strict=True):
                column.append(value)
    return (
        [r.execution_id for r in requests],
        [r.expected_seq for r in requests],
        *events,
        *cancels,
        *sets,
    )


def _version(row: asyncpg.Record) -> WorkflowVersion:
    return WorkflowVersion(
        namespace=row["namespace"],
        name=row["name"],
        version=row["version"],
        definition=_decode_dict.decode(row["definition"]),
        created_at=row["created_at"],
        type=row["type"],
    )


def _execution(row: asyncpg.Record) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=row["execution_id"],
        namespace=row["namespace"],
        workflow=row["workflow"],
        version=row["version"],
        name=row["name"],
        input_json=row["input"].encode(),
        started_at=row["started_at"],
    )


def _bad_json(exc: asyncpg.PostgresError) -> InvalidRequest:
    # Text PostgreSQL cannot hold (json columns take every JSON escape, "\u0000" too).
    return InvalidRequest(f"JSON refused by the database: {exc}")


_JSON_ERRORS = (asyncpg.InvalidTextRepresentationError, asyncpg.UntranslatableCharacterError)
# A deadlock or serialization failure with another transaction: the batch's requests
# can each be started on their own.
_CONFLICT_STATES = frozenset(("40P01", "40001"))


# ---------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------


class EventStore(PoolQueries):
    """The event store over an asyncpg pool it does not own (it never closes it).

    Contracts (docs/internals.md "Store"): events are immutable and seq is contiguous
    from 1 per execution; `append` at a taken seq raises `ConcurrencyError`; an execution
    name starts one execution however often it is sent (`ExecutionNameConflict` for a
    different input); `read_all` never skips an event committed late.
    """

    notify_channel = NOTIFY_CHANNEL

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in a transaction; failures inside are translated too."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn

    # -- workflows ------------------------------------------------------------------------

    async def put_workflow(
        self,
        namespace: str,
        name: str,
        definition: dict[str, Any],
        type: str = STANDARD,
    ) -> tuple[WorkflowVersion, bool]:
        """Store ``definition`` as the next version of the workflow unless it is the
        latest one, keys in the same order (`definition_json`: a Pass state's Result or
        a Parameters template in another order gives output in another order). Returns
        (version, created). A version stored before migration 0005 carries a hash of
        its sorted keys, so registering it again makes one new version, in the order
        given (the stored one had lost its order). ``type`` is STANDARD or EXPRESS: the
        same definition under the other type is a new version."""
        text = definition_json(definition)
        # A STANDARD version's hash is the definition's alone (as before types existed).
        digest = _sha256(text if type == STANDARD else type.encode() + b":" + text)
        async with self._transaction() as conn:
            await conn.execute(INSERT_WORKFLOW, namespace, name)
            await conn.execute(LOCK_WORKFLOW, namespace, name)
            latest = await conn.fetchrow(SELECT_LATEST_VERSION, namespace, name)
            if latest is not None and latest["definition_hash"] == digest:
                return _version(latest), False
            try:
                row = await conn.fetchrow(
                    INSERT_VERSION,
                    namespace,
                    name,
                    1 if latest is None else latest["version"] + 1,
                    _text(text),
                    digest,
                    type,
                )
            except _JSON_ERRORS as exc:
                raise _bad_json(exc) from None
            return _version(row), True

    async def get_workflow(
        self, namespace: str, name: str, version: int | None = None
    ) -> WorkflowVersion | None:
        """The given version, or the latest one when ``version`` is None."""
        if version is None:
            row = await self._fetchrow(SELECT_LATEST_VERSION, namespace, name)
        else:
            row = await self._fetchrow(SELECT_VERSION, namespace, name, version)
        return None if row is None else _version(row)

    async def list_workflows(self, namespace: str) -> list[WorkflowVersion]:
        """The latest version of every workflow of ``namespace``, by name."""
        return [_version(r) for r in await self._fetch(LIST_LATEST_VERSIONS, namespace)]

    # -- executions -----------------------------------------------------------------------

    async def start_execution(
        self,
        namespace: str,
        workflow: str,
        version: int,
        execution_id: UUID,
        name: str,
        input_json: bytes,
        started: NewEvent,
        then: Sequence[NewEvent] = (),
        set_timers: Sequence[TimerLike] = (),
        *,
        latest_only: bool = False,
    ) -> tuple[ExecutionRecord, bool]:
        """Create the execution and its event seq 1 (``started``) atomically, with
        ``then`` (seq 2 ..., stamped ``started.timestamp``: a first decision already
        made) and ``set_timers`` in the same commit when given. With ``latest_only``,
        only if ``version`` is the workflow's latest when the statement runs, else
        `NotLatestVersion` (a caller that remembers workflows learns that its copy is
        old without asking first).

        ``input_json`` is stored as given (see `json_as_sent`) without its
        insignificant whitespace; `InvalidRequest` when it is not JSON. The same
        (namespace, workflow, name) with the same input text (up to whitespace)
        returns the existing record and created=False (also under concurrency); any
        other input, a re-ordered one included, raises `ExecutionNameConflict`.
        ``started.timestamp`` becomes ``started_at``.
        """
        input_json = _compact_document(input_json)
        digest = input_hash(input_json)
        try:
            started_row = await self._fetchrow(
                START_EXECUTION,
                execution_id,
                namespace,
                workflow,
                version,
                name,
                _text(input_json),
                digest,
                started.timestamp,
                [started.type, *(e.type for e in then)],
                [_text(started.data), *(_text(e.data) for e in then)],
                [t.timer_id for t in set_timers],
                [t.due for t in set_timers],
                latest_only,
            )
            assert started_row is not None  # (one row, whatever was inserted)
            position, latest = started_row
        except _JSON_ERRORS as exc:
            raise _bad_json(exc) from None
        except asyncpg.UniqueViolationError as exc:
            # Only the execution_id can collide here (names are the ON CONFLICT target).
            raise ConcurrencyError(f"execution {execution_id} already exists") from exc
        if position is not None:
            record = ExecutionRecord(
                execution_id=execution_id,
                namespace=namespace,
                workflow=workflow,
                version=version,
                name=name,
                input_json=input_json,
                started_at=started.timestamp,
            )
            return record, True
        if latest_only and latest != version:
            raise NotLatestVersion(latest)
        row = await self._fetchrow(SELECT_EXECUTION_BY_NAME, namespace, workflow, name)
        if row is None:  # pragma: no cover - rows are never deleted
            raise ConcurrencyError(f"execution {name!r} vanished while starting")
        if not _same_input(row["input_hash"], input_json):
            raise ExecutionNameConflict(
                f"execution {name!r} of {namespace}/{workflow} exists with a different input"
            )
        return _execution(row), False

    async def start_batch(
        self, requests: Sequence[StartRequest]
    ) -> list[ExecutionRecord | SteplogError | None]:
        """The starts of ``requests`` that are new names of the latest versions, in one
        statement (one commit): per request its record, created, or None when this
        statement did not start it (its name exists or was taken by an earlier request
        of the batch, or its version is not the latest: `start_execution` with
        ``latest_only`` says which), or its own `InvalidRequest` (input not JSON). When
        the statement fails as a whole (data PostgreSQL refuses, a deadlock), every
        request is None: nothing was written."""
        results: list[ExecutionRecord | SteplogError | None] = []
        columns: list[list[Any]] = [[] for _ in range(8)]
        events: list[list[Any]] = [[] for _ in range(4)]
        timers: list[list[Any]] = [[] for _ in range(3)]
        inputs: dict[UUID, bytes] = {}
        for r in requests:
            try:
                input_json = _compact_document(r.input_json)
                texts = [_text(r.started.data), *(_text(e.data) for e in r.then)]
                row = (
                    r.execution_id, r.namespace, r.workflow, r.version, r.name,
                    _text(input_json), input_hash(input_json), r.started.timestamp,
                )  # fmt: skip
            except InvalidRequest as exc:
                results.append(exc)
                continue
            results.append(None)
            inputs[r.execution_id] = input_json
            for column, value in zip(columns, row, strict=True):
                column.append(value)
            for seq, (kind, text) in enumerate(
                zip([r.started.type, *(e.type for e in r.then)], texts, strict=True), 1
            ):
                for column, value in zip(events, (r.execution_id, seq, kind, text), strict=True):
                    column.append(value)
            for t in r.set_timers:
                for column, value in zip(timers, (r.execution_id, t.timer_id, t.due), strict=True):
                    column.append(value)
        if not inputs:
            return results
        try:
            rows = await self._fetch(START_EXECUTIONS, *columns, *events, *timers)
        except Unavailable as exc:
            if getattr(exc.__cause__, "sqlstate", "") not in _CONFLICT_STATES:
                raise  # PostgreSQL away: so it is for every request
            return [r if isinstance(r, SteplogError) else None for r in results]
        except (InvalidData, asyncpg.PostgresError):
            # One request's data, or a collision: each is started on its own.
            return [r if isinstance(r, SteplogError) else None for r in results]
        started = {row["execution_id"] for row in rows}
        for i, r in enumerate(requests):
            if results[i] is None and r.execution_id in started:
                results[i] = ExecutionRecord(
                    execution_id=r.execution_id,
                    namespace=r.namespace,
                    workflow=r.workflow,
                    version=r.version,
                    name=r.name,
                    input_json=inputs[r.execution_id],
                    started_at=r.started.timestamp,
                )
        return results

    async def find_execution(
        self, namespace: str, workflow: str, name: str
    ) -> ExecutionRecord | None:
        """The execution of ``workflow`` named ``name``, if any."""
        row = await self._fetchrow(SELECT_EXECUTION_BY_NAME, namespace, workflow, name)
        return None if row is None else _execution(row)

    async def get_execution(
        self, execution_id: UUID, namespace: str | None = None
    ) -> ExecutionRecord | None:
        """The execution's start record (only when it is of ``namespace``, when given):
        another namespace's execution is not found, by the same one query."""
        row = await self._fetchrow(SELECT_EXECUTION, execution_id, namespace)
        return None if row is None else _execution(row)

    async def list_executions(
        self,
        namespace: str,
        workflow: str | None = None,
        after: UUID | None = None,
        limit: int = 100,
    ) -> list[ExecutionRecord]:
        """Executions of ``namespace`` (of ``workflow`` when given) by id, after ``after``."""
        rows = await self._fetch(LIST_EXECUTIONS, namespace, workflow, after or UUID(int=0), limit)
        return [_execution(r) for r in rows]

    async def running_executions(self, namespace: str | None = None) -> list[UUID]:
        """Ids of executions whose last event is not terminal (for recovery), oldest first."""
        rows = await self._fetch(RUNNING_EXECUTIONS, namespace, list(TERMINAL_EVENT_TYPES))
        return [r["execution_id"] for r in rows]

    # -- events ---------------------------------------------------------------------------

    async def append(
        self,
        execution_id: UUID,
        expected_seq: int,
        events: Sequence[NewEvent],
        set_timers: Sequence[TimerLike] = (),
        cancel_timers: Sequence[str] = (),
    ) -> list[StoredEvent]:
        """Append ``events`` at seq ``expected_seq + 1 ...`` in one transaction with the
        timer changes, and notify `NOTIFY_CHANNEL` on commit.

        Raises `ConcurrencyError` when a seq is taken (another writer won) or when the
        execution has no event ``expected_seq`` (the caller's state is not the log's).
        With no events, only the timer changes are applied.
        """
        timer_ids = [t.timer_id for t in set_timers]
        timer_dues = [t.due for t in set_timers]
        if not events:
            async with self._transaction() as conn:
                if cancel_timers:
                    await conn.execute(CANCEL_TIMERS, list(cancel_timers))
                if timer_ids:
                    await conn.execute(UPSERT_TIMERS, execution_id, timer_ids, timer_dues)
            return []
        try:
            rows = await self._fetch(
                APPEND,
                execution_id,
                expected_seq,
                [e.type for e in events],
                [_text(e.data) for e in events],
                [e.timestamp for e in events],
                list(cancel_timers),
                timer_ids,
                timer_dues,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrencyError(
                f"execution {execution_id}: seq {expected_seq + 1} is already taken"
            ) from exc
        except _JSON_ERRORS as exc:
            raise _bad_json(exc) from None
        if not rows:
            raise ConcurrencyError(f"execution {execution_id} has no event at seq {expected_seq}")
        return [
            StoredEvent(
                execution_id=execution_id,
                seq=row["seq"],
                position=row["position"],
                type=event.type,
                data=event.data,
                timestamp=event.timestamp,
                tx_id=row["tx_id"],
            )
            for row, event in zip(rows, events, strict=True)
        ]

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[list[StoredEvent] | SteplogError]:
        """Append every request as `append` would, in one statement (one transaction):
        the result of each, in order, is its stored events or the error `append` would
        have raised for it (`ConcurrencyError`: its execution is not at its expected
        seq, which fails no other request; `InvalidRequest`: data refused). The
        executions must be distinct and every request must carry events. When the
        statement fails for one request's sake (a concurrent writer took a seq after the
        check, data the database refuses), each request is appended on its own, so only
        that one fails. Raises `Unavailable` (for all of them) when PostgreSQL does not
        answer."""
        if len({r.execution_id for r in requests}) != len(requests):
            raise ValueError("append_batch takes one request per execution")
        if any(not r.events for r in requests):
            raise ValueError("append_batch takes requests with events")
        try:
            rows = await self._fetch(APPEND_BATCH, *_batch_arguments(requests))
        except Unavailable:
            raise
        except (asyncpg.UniqueViolationError, InvalidRequest, *_JSON_ERRORS):
            return [await self._append_alone(r) for r in requests]
        by_execution: dict[UUID, list[asyncpg.Record]] = {}
        for row in rows:
            by_execution.setdefault(row["execution_id"], []).append(row)
        results: list[list[StoredEvent] | SteplogError] = []
        for r in requests:
            appended = by_execution.get(r.execution_id)
            if appended is None:
                results.append(
                    ConcurrencyError(f"execution {r.execution_id} is not at seq {r.expected_seq}")
                )
                continue
            results.append(
                [
                    StoredEvent(
                        execution_id=r.execution_id,
                        seq=row["seq"],
                        position=row["position"],
                        type=event.type,
                        data=event.data,
                        timestamp=event.timestamp,
                        tx_id=row["tx_id"],
                    )
                    for row, event in zip(appended, r.events, strict=True)
                ]
            )
        return results

    async def _append_alone(self, r: AppendRequest) -> list[StoredEvent] | SteplogError:
        try:
            return await self.append(
                r.execution_id, r.expected_seq, r.events, r.set_timers, r.cancel_timers
            )
        except (ConcurrencyError, InvalidRequest) as exc:
            return exc

    async def load_many(self, after: dict[UUID, int]) -> dict[UUID, list[StoredEvent]]:
        """The events of each execution of ``after`` with seq above its value, by seq (an
        execution with none: an empty list)."""
        loaded: dict[UUID, list[StoredEvent]] = {eid: [] for eid in after}
        if not after:
            return loaded
        rows = await self._fetch(LOAD_MANY, list(after), list(after.values()))
        for row in rows:
            loaded[row["execution_id"]].append(_stored(row))
        return loaded

    async def load(
        self,
        execution_id: UUID,
        after_seq: int = 0,
        upto_seq: int | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[StoredEvent]:
        """Events with ``after_seq < seq <= upto_seq`` (no upper bound when None), by seq
        ascending, or descending when ``reverse``; at most ``limit`` (None = all)."""
        query = LOAD_BACKWARD if reverse else LOAD_FORWARD
        upper = _MAX_SEQ if upto_seq is None else upto_seq
        rows = await self._fetch(query, execution_id, after_seq, upper, limit)
        return [_stored(r) for r in rows]

    async def load_for_fold(
        self, execution_id: UUID, after_seq: int = 0, upto_seq: int | None = None
    ) -> tuple[list[str], list[datetime]]:
        """The data (JSON text) and recorded times of the events with ``after_seq < seq <=
        upto_seq``, by seq: what rebuilding a state needs, without a StoredEvent per
        event (engine.service.fold_data)."""
        upper = _MAX_SEQ if upto_seq is None else upto_seq
        rows = await self._fetch(LOAD_FOR_FOLD, execution_id, after_seq, upper)
        return [r[0] for r in rows], [r[1] for r in rows]

    async def read_all(self, after: GlobalPosition, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events after ``after`` in commit-safe global order: ordered by
        (tx_id, position), never returning an event while a transaction that could still
        commit one before it is in flight. Page with ``events[-1].global_position``."""
        rows = await self._fetch(READ_ALL, str(after.tx_id), after.position, limit)
        return [_stored(r) for r in rows]

    # -- timers ---------------------------------------------------------------------------

    async def due_timers(self, now: datetime, limit: int) -> list[DueTimer]:
        """Timers with ``due_at <= now``, earliest first."""
        rows = await self._fetch(DUE_TIMERS, now, limit)
        return [DueTimer(r["timer_id"], r["execution_id"], r["due_at"]) for r in rows]

    async def claim_due_timers(
        self, now: datetime | None, limit: int, lease_s: float
    ) -> list[DueTimer]:
        """Claim up to ``limit`` due timers not yet fired for their due time and not
        leased by another firer, for ``lease_s`` seconds; earliest first. Due and leased
        by PostgreSQL's clock (``clock_timestamp()`` in the statement) when ``now`` is
        None, the production path; a ``now`` given stands in for it. Concurrent callers
        get disjoint sets. Call `mark_timers_fired` once their triggers are out."""
        rows = await self._fetch(CLAIM_DUE_TIMERS, now, limit, lease_s)
        timers = [
            DueTimer(
                r["timer_id"], r["execution_id"], r["due_at"], r["claimed_until"], r["claimed_at"]
            )
            for r in rows
        ]
        timers.sort(key=lambda t: (t.due_at, t.timer_id))
        return timers

    async def mark_timers_fired(self, timers: Sequence[DueTimer]) -> None:
        """Record that ``timers`` (as claimed) fired for their due times and release their
        leases; a timer moved or re-armed since its claim stays due."""
        if timers:
            await self._execute(
                MARK_TIMERS_FIRED,
                [t.timer_id for t in timers],
                [t.due_at for t in timers],
                [t.claimed_until for t in timers],
            )

    async def rearm_timers(self) -> int:
        """Make every fired or claimed timer due again (recovery after Redis lost the
        triggers); returns how many were re-armed."""
        status = await self._execute(REARM_TIMERS)
        return int(status.split()[-1])

    async def ended_executions(self, execution_ids: Sequence[UUID]) -> set[UUID]:
        """The subset of ``execution_ids`` that have ended (unknown ids are not ended)."""
        if not execution_ids:
            return set()
        rows = await self._fetch(ENDED_EXECUTIONS, list(execution_ids), list(TERMINAL_EVENT_TYPES))
        return {r["execution_id"] for r in rows}

    async def delete_timer(self, timer_id: str) -> bool:
        """Delete a timer; False if it was already gone."""
        status = await self._execute(DELETE_TIMER, timer_id)
        return status != "DELETE 0"

    async def timer_stats(self) -> tuple[int, float]:
        """(timers recorded, seconds since the earliest came due, 0 when none is due)."""
        row = await self._fetchrow(TIMER_STATS)
        assert row is not None
        return int(row[0]), max(0.0, float(row[1]))

    async def ping(self) -> bool:
        """True when PostgreSQL answers (raises `Unavailable` when it does not)."""
        return bool(await self._fetchval(PING) == 1)

    async def ping_writable(self) -> None:
        """Return when PostgreSQL answers and would accept writes; `Unavailable` when it
        does not answer or is read-only (a standby, default_transaction_read_only on)."""
        if await self._fetchval(READ_ONLY):
            raise Unavailable("PostgreSQL is read-only (a standby, or transactions read-only)")
