"""All SQL of webhooks (migrations 0009, 0015): subscriptions, the deliveries queued from
the event log, and every attempt.

Contracts
- `create` counts the namespace's subscriptions and inserts the new one in one
  transaction holding a transaction-level advisory lock on the namespace, so concurrent
  creates cannot together go past the cap (`max_per_namespace`).
- `rotate_secret` moves the current secret to previous_secret, valid until now() plus the
  overlap (PostgreSQL's clock, like every durable time); rotating again during an overlap
  drops the older previous secret. A claim hands the sender the previous secret only
  while it is valid, so a delivery carries both signatures during the overlap and only
  the new one after it.
- A subscription's checkpoint (tx_id, position) starts at the end of the log readable
  when it is created (what commits later is after it) and moves only in `queue`, in the
  transaction that inserts the deliveries of the events up to it, after checking that
  nobody moved it meanwhile: each event is queued once per subscription, whichever
  process reads it.
- `claim` hands out due, pending deliveries that are the head of their execution's queue
  for that subscription (no pending delivery of a lower seq), and leases them; a lease
  that runs out (a sender died) makes the delivery claimable again.
- The role's own writes (`queue`, `claim`, `record`) commit without waiting for the WAL
  flush (synchronous_commit off): a PostgreSQL crash may forget the last moment of them,
  which only makes those deliveries be sent again (at least once, same webhook-id);
  nothing is ever skipped, since the checkpoint and the deliveries it queued go together.
  The subscriptions themselves (API, CLI) are written durably.
- `record` writes the attempt, and changes the delivery only when no one claimed it
  since (its attempt count is still the one claimed), in one transaction with the
  subscription's failure bookkeeping (failing_since, pausing after too long).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from engine.adapters.postgres import PoolQueries, translate_errors

ASYNC_COMMIT = "SET LOCAL synchronous_commit TO off"
_SUB_COLUMNS = """webhook_id, namespace, url, secret, description, event_types, statuses,
       workflows, enabled, paused_reason, failing_since, tx_id::text AS tx_id, position,
       created_at, updated_at,
       CASE WHEN previous_secret_until > now() THEN previous_secret_until END
           AS previous_secret_until"""
# Advisory lock class of webhook creates (the ASCII of "stpW", beside the recoverer's
# "stpC"); the key is hashtext(namespace). Held until the transaction ends.
CREATE_LOCK_CLASS = 0x73747057
LOCK_NAMESPACE_CREATES = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
# Inserted only while the namespace has fewer than $11 subscriptions ($11 = 0: no cap);
# the start of its checkpoint is the end of the log as read_all can see it now: what
# commits later sorts after it.
INSERT_SUBSCRIPTION = f"""
INSERT INTO webhook_subscriptions
    (webhook_id, namespace, url, secret, description, event_types, statuses, workflows,
     enabled, paused_reason, tx_id, position)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
       coalesce(last.tx_id, '0'::xid8), coalesce(last.position, 0)
FROM (SELECT 1) one
LEFT JOIN LATERAL (
    SELECT tx_id, position FROM events
    WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY tx_id DESC, position DESC LIMIT 1
) last ON true
WHERE $11::int = 0
   OR (SELECT count(*) FROM webhook_subscriptions WHERE namespace = $2) < $11::int
RETURNING {_SUB_COLUMNS}"""
SELECT_SUBSCRIPTION = f"""
SELECT {_SUB_COLUMNS} FROM webhook_subscriptions WHERE webhook_id = $1 AND namespace = $2"""
LIST_SUBSCRIPTIONS = f"""
SELECT {_SUB_COLUMNS} FROM webhook_subscriptions
WHERE ($1::text IS NULL OR namespace = $1) ORDER BY created_at, webhook_id"""
ENABLED_SUBSCRIPTIONS = f"""
SELECT {_SUB_COLUMNS} FROM webhook_subscriptions WHERE enabled ORDER BY webhook_id"""
UPDATE_SUBSCRIPTION = f"""
UPDATE webhook_subscriptions SET
    url = coalesce($3, url),
    description = coalesce($4, description),
    event_types = coalesce($5, event_types),
    statuses = coalesce($6, statuses),
    workflows = coalesce($7, workflows),
    enabled = coalesce($8, enabled),
    paused_reason = CASE WHEN $8 IS NULL THEN paused_reason
                         WHEN $8 THEN NULL ELSE $9 END,
    failing_since = CASE WHEN $8 THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE webhook_id = $1 AND namespace = $2
RETURNING {_SUB_COLUMNS}"""
# The secret being replaced signs along until now() + $4 seconds; an older previous secret
# is dropped.
ROTATE_SECRET = f"""
UPDATE webhook_subscriptions SET
    previous_secret = secret,
    previous_secret_until = now() + make_interval(secs => $4),
    secret = $3,
    updated_at = now()
WHERE webhook_id = $1 AND namespace = $2
RETURNING {_SUB_COLUMNS}"""
DELETE_SUBSCRIPTION = """
DELETE FROM webhook_subscriptions WHERE webhook_id = $1 AND namespace = $2 RETURNING webhook_id"""

# The log from a position, with what a webhook payload and filter need of its execution.
READ_EVENTS = """
SELECT e.execution_id, e.seq, e.position, e.tx_id::text AS tx_id, e.type, e.data::text AS data,
       e.recorded_at, x.namespace, x.workflow, x.name AS execution_name
FROM events e LEFT JOIN executions x ON x.execution_id = e.execution_id
WHERE (e.tx_id, e.position) > ($1::text::xid8, $2::bigint)
  AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.tx_id, e.position
LIMIT $3"""
LOCK_CHECKPOINTS = """
SELECT webhook_id, tx_id::text AS tx_id, position FROM webhook_subscriptions
WHERE webhook_id = ANY($1::uuid[]) AND enabled ORDER BY webhook_id FOR UPDATE"""
SET_CHECKPOINT = """
UPDATE webhook_subscriptions SET tx_id = $2::text::xid8, position = $3 WHERE webhook_id = $1"""
INSERT_DELIVERIES = """
INSERT INTO webhook_deliveries
    (webhook_id, delivery_id, execution_id, seq, event_type, payload, first_attempt_at)
SELECT $1, u.delivery_id, u.execution_id, u.seq, u.event_type, u.payload, now()
FROM unnest($2::text[], $3::uuid[], $4::int[], $5::text[], $6::text[])
    AS u(delivery_id, execution_id, seq, event_type, payload)
ON CONFLICT DO NOTHING"""

_CLAIM = """
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS off),
due AS (
    SELECT d.webhook_id, d.delivery_id
    FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.webhook_id = d.webhook_id
    WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND s.enabled
      AND (d.leased_until IS NULL OR d.leased_until < now())
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.webhook_id = d.webhook_id AND p.execution_id = d.execution_id
            AND p.state = 'pending' AND p.seq < d.seq)
      {only}
    ORDER BY d.next_attempt_at, d.created_at
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET leased_until = now() + make_interval(secs => $2), attempts = d.attempts + 1
FROM due, webhook_subscriptions s, async_commit
WHERE d.webhook_id = due.webhook_id AND d.delivery_id = due.delivery_id
  AND s.webhook_id = d.webhook_id
RETURNING d.webhook_id, d.delivery_id, d.execution_id, d.seq, d.payload, d.attempts,
          coalesce(d.first_attempt_at, d.created_at) AS first_attempt_at, s.url, s.secret,
          CASE WHEN s.previous_secret_until > now() THEN s.previous_secret END
              AS previous_secret"""
CLAIM = _CLAIM.format(only="")
# The next delivery of one execution for one subscription (after one was delivered).
CLAIM_NEXT = _CLAIM.format(only="AND d.webhook_id = $3 AND d.execution_id = $4")
# One statement (one round trip, its own transaction): the attempt, what became of the
# delivery ($9: 'delivered', 'pending' again at $10, or 'dead') unless someone claimed it
# since, and the subscription's failure bookkeeping: a success clears failing_since (the
# row is touched only when it was set), a failure sets it and pauses the subscription
# once it is older than $11 seconds.
RECORD = """
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS off),
attempt AS (
    INSERT INTO webhook_attempts
        (webhook_id, delivery_id, attempt, at, status_code, latency_ms, error, response_excerpt)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM async_commit
    WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE webhook_id = $1 AND delivery_id = $2)
    ON CONFLICT DO NOTHING
    RETURNING 1
), finished AS (
    UPDATE webhook_deliveries
    SET state = $9, next_attempt_at = coalesce($10, next_attempt_at), leased_until = NULL,
        finished_at = CASE WHEN $9 = 'pending' THEN NULL ELSE now() END
    WHERE webhook_id = $1 AND delivery_id = $2 AND attempts = $3 AND state = 'pending'
    RETURNING 1
), succeeded AS (
    UPDATE webhook_subscriptions SET failing_since = NULL
    WHERE webhook_id = $1 AND $9 = 'delivered' AND failing_since IS NOT NULL
    RETURNING 1
), failed AS (
    UPDATE webhook_subscriptions SET
        failing_since = coalesce(failing_since, $4),
        enabled = enabled AND coalesce(failing_since, $4) > $4 - make_interval(secs => $11),
        paused_reason = CASE
            WHEN enabled AND coalesce(failing_since, $4) <= $4 - make_interval(secs => $11)
            THEN 'failing since ' || to_char(coalesce(failing_since, $4) AT TIME ZONE 'UTC',
                                             'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ': ' || $12
            ELSE paused_reason END,
        updated_at = now()
    WHERE webhook_id = $1 AND $9 <> 'delivered'
    RETURNING 1
)
SELECT (SELECT count(*) FROM attempt) AS attempts, (SELECT count(*) FROM finished) AS finished"""

_DELIVERY_COLUMNS = """d.webhook_id, d.delivery_id, d.execution_id, d.seq, d.event_type,
       d.state, d.attempts, d.next_attempt_at, d.created_at, d.finished_at"""
LIST_DELIVERIES = f"""
SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d
WHERE d.webhook_id = $1 AND ($2::text IS NULL OR d.state = $2)
ORDER BY d.created_at DESC, d.delivery_id DESC LIMIT $3"""
LIST_ATTEMPTS = """
SELECT delivery_id, attempt, at, status_code, latency_ms, error, response_excerpt
FROM webhook_attempts WHERE webhook_id = $1 AND delivery_id = ANY($2::text[])
ORDER BY delivery_id, attempt"""
REPLAY = f"""
UPDATE webhook_deliveries d
SET state = 'pending', next_attempt_at = now(), first_attempt_at = now(), leased_until = NULL,
    finished_at = NULL
WHERE d.webhook_id = $1 AND d.delivery_id = $2
RETURNING {_DELIVERY_COLUMNS}"""


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: UUID
    namespace: str
    url: str
    secret: str
    description: str
    event_types: tuple[str, ...]
    statuses: tuple[str, ...]
    workflows: tuple[str, ...]
    enabled: bool
    paused_reason: str | None
    failing_since: dt.datetime | None
    tx_id: int
    position: int
    created_at: dt.datetime
    updated_at: dt.datetime
    # Until when the secret replaced by the last rotation signs too (None: no overlap).
    previous_secret_until: dt.datetime | None = None


class LoggedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event of the log with its execution's namespace, workflow and name (None when
    the executions row is missing, which the store never lets happen)."""

    execution_id: UUID
    seq: int
    position: int
    tx_id: int
    type: str
    data: str
    recorded_at: dt.datetime
    namespace: str | None
    workflow: str | None
    execution_name: str | None


class NewDelivery(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    execution_id: UUID
    seq: int
    event_type: str
    payload: str


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: UUID
    delivery_id: str
    execution_id: UUID
    seq: int
    payload: str
    attempt: int
    first_attempt_at: dt.datetime
    url: str
    secret: str
    # The secret replaced by a rotation, while its overlap lasts: it signs too.
    previous_secret: str | None = None


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    at: dt.datetime
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: str


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    webhook_id: UUID
    delivery_id: str
    execution_id: UUID
    seq: int
    event_type: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    created_at: dt.datetime
    finished_at: dt.datetime | None
    history: tuple[AttemptRecord, ...] = ()


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one attempt: ``state`` 'delivered', 'pending' (retry at
    ``next_attempt_at``) or 'dead'."""

    state: str
    next_attempt_at: dt.datetime | None = None
    at: dt.datetime
    status_code: int | None = None
    latency_ms: float = 0.0
    error: str | None = None
    response_excerpt: str = ""


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(
        webhook_id=row["webhook_id"],
        namespace=row["namespace"],
        url=row["url"],
        secret=row["secret"],
        description=row["description"],
        event_types=tuple(row["event_types"]),
        statuses=tuple(row["statuses"]),
        workflows=tuple(row["workflows"]),
        enabled=row["enabled"],
        paused_reason=row["paused_reason"],
        failing_since=row["failing_since"],
        tx_id=int(row["tx_id"]),
        position=row["position"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        previous_secret_until=row["previous_secret_until"],
    )


def _delivery(row: asyncpg.Record, history: tuple[AttemptRecord, ...] = ()) -> DeliveryRecord:
    return DeliveryRecord(
        webhook_id=row["webhook_id"],
        delivery_id=row["delivery_id"],
        execution_id=row["execution_id"],
        seq=row["seq"],
        event_type=row["event_type"],
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        history=history,
    )


def _claimed(r: asyncpg.Record) -> Claimed:
    return Claimed(
        webhook_id=r["webhook_id"],
        delivery_id=r["delivery_id"],
        execution_id=r["execution_id"],
        seq=r["seq"],
        payload=r["payload"],
        attempt=r["attempts"],
        first_attempt_at=r["first_attempt_at"],
        url=r["url"],
        secret=r["secret"],
        previous_secret=r["previous_secret"],
    )


def _record_args(claimed: Claimed, outcome: Outcome, pause_after_s: float) -> tuple[Any, ...]:
    return (
        claimed.webhook_id,
        claimed.delivery_id,
        claimed.attempt,
        outcome.at,
        outcome.status_code,
        outcome.latency_ms,
        outcome.error,
        outcome.response_excerpt,
        outcome.state,
        outcome.next_attempt_at,
        pause_after_s,
        outcome.error or f"HTTP {outcome.status_code}",
    )


class WebhookStore(PoolQueries):
    """Webhook rows over a pool it does not own."""

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction of the webhooks role (committed without waiting for the flush)."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(ASYNC_COMMIT)
                yield conn

    # -- subscriptions ----------------------------------------------------------------

    async def create(
        self,
        *,
        webhook_id: UUID,
        namespace: str,
        url: str,
        secret: str,
        description: str,
        event_types: Sequence[str],
        statuses: Sequence[str],
        workflows: Sequence[str],
        enabled: bool,
        paused_reason: str | None,
        max_per_namespace: int = 0,
    ) -> Subscription | None:
        """The new subscription; None when ``namespace`` already has ``max_per_namespace``
        (0: no cap). Race-free: the count and the insert run under the namespace's lock."""
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(LOCK_NAMESPACE_CREATES, CREATE_LOCK_CLASS, namespace)
                row = await conn.fetchrow(
                    INSERT_SUBSCRIPTION,
                    webhook_id,
                    namespace,
                    url,
                    secret,
                    description,
                    list(event_types),
                    list(statuses),
                    list(workflows),
                    enabled,
                    paused_reason,
                    max_per_namespace,
                )
        return None if row is None else _subscription(row)

    async def get(self, namespace: str, webhook_id: UUID) -> Subscription | None:
        row = await self._fetchrow(SELECT_SUBSCRIPTION, webhook_id, namespace)
        return None if row is None else _subscription(row)

    async def list_webhooks(self, namespace: str | None) -> list[Subscription]:
        return [_subscription(r) for r in await self._fetch(LIST_SUBSCRIPTIONS, namespace)]

    async def enabled(self) -> list[Subscription]:
        return [_subscription(r) for r in await self._fetch(ENABLED_SUBSCRIPTIONS)]

    async def update(
        self,
        namespace: str,
        webhook_id: UUID,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        workflows: Sequence[str] | None = None,
        enabled: bool | None = None,
        paused_reason: str | None = None,
    ) -> Subscription | None:
        def listed(values: Sequence[str] | None) -> list[str] | None:
            return None if values is None else list(values)

        row = await self._fetchrow(
            UPDATE_SUBSCRIPTION,
            webhook_id,
            namespace,
            url,
            description,
            listed(event_types),
            listed(statuses),
            listed(workflows),
            enabled,
            paused_reason,
        )
        return None if row is None else _subscription(row)

    async def rotate_secret(
        self, namespace: str, webhook_id: UUID, secret: str, overlap_s: float
    ) -> Subscription | None:
        """Sign with ``secret`` from now on, and with the one it replaces too for
        ``overlap_s`` seconds; None when there is no such subscription."""
        row = await self._fetchrow(ROTATE_SECRET, webhook_id, namespace, secret, overlap_s)
        return None if row is None else _subscription(row)

    async def delete(self, namespace: str, webhook_id: UUID) -> bool:
        return await self._fetchrow(DELETE_SUBSCRIPTION, webhook_id, namespace) is not None

    # -- queueing from the log -------------------------------------------------------

    async def read_events(self, after: tuple[int, int], limit: int) -> list[LoggedEvent]:
        rows = await self._fetch(READ_EVENTS, str(after[0]), after[1], limit)
        return [
            LoggedEvent(
                execution_id=r["execution_id"],
                seq=r["seq"],
                position=r["position"],
                tx_id=int(r["tx_id"]),
                type=r["type"],
                data=r["data"],
                recorded_at=r["recorded_at"],
                namespace=r["namespace"],
                workflow=r["workflow"],
                execution_name=r["execution_name"],
            )
            for r in rows
        ]

    async def queue(
        self,
        read_from: dict[UUID, tuple[int, int]],
        deliveries: dict[UUID, list[NewDelivery]],
        upto: tuple[int, int],
    ) -> int:
        """For each subscription of ``read_from`` (the checkpoint its batch was read
        after) whose checkpoint is still that: insert its deliveries and move its
        checkpoint to ``upto``. Returns the deliveries inserted."""
        inserted = 0
        async with self._transaction() as conn:
            rows = await conn.fetch(LOCK_CHECKPOINTS, list(read_from))
            for row in rows:
                webhook_id = row["webhook_id"]
                if (int(row["tx_id"]), row["position"]) != read_from[webhook_id]:
                    continue  # another process queued this part meanwhile
                batch = deliveries.get(webhook_id, [])
                if batch:
                    status = await conn.execute(
                        INSERT_DELIVERIES,
                        webhook_id,
                        [d.delivery_id for d in batch],
                        [d.execution_id for d in batch],
                        [d.seq for d in batch],
                        [d.event_type for d in batch],
                        [d.payload for d in batch],
                    )
                    inserted += int(status.rsplit(" ", 1)[1])
                await conn.execute(SET_CHECKPOINT, webhook_id, str(upto[0]), upto[1])
        return inserted

    # -- sending ---------------------------------------------------------------------

    async def claim(
        self, limit: int, lease_s: float, *, of: tuple[UUID, UUID] | None = None
    ) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries; ``of``: only (webhook_id, execution_id)'s."""
        if of is None:
            rows = await self._fetch(CLAIM, limit, lease_s)
        else:
            rows = await self._fetch(CLAIM_NEXT, limit, lease_s, *of)
        return [_claimed(r) for r in rows]

    async def record(
        self,
        claimed: Claimed,
        outcome: Outcome,
        pause_after_s: float,
        *,
        next_lease_s: float | None = None,
    ) -> Claimed | None:
        """Write the attempt and what became of the delivery; nothing when the subscription
        was deleted meanwhile (its deliveries went with it). With ``next_lease_s``, after a
        delivery, also claim the next due delivery of the same execution for the same
        subscription (on the same pooled connection: one reset instead of two)."""
        with translate_errors():
            async with self._pool.acquire() as conn:
                try:
                    await conn.fetchrow(RECORD, *_record_args(claimed, outcome, pause_after_s))
                except asyncpg.ForeignKeyViolationError:
                    return None
                if next_lease_s is None or outcome.state != "delivered":
                    return None
                rows = await conn.fetch(
                    CLAIM_NEXT, 1, next_lease_s, claimed.webhook_id, claimed.execution_id
                )
                return _claimed(rows[0]) if rows else None

    # -- deliveries as listed ---------------------------------------------------------

    async def deliveries(
        self, webhook_id: UUID, state: str | None, limit: int
    ) -> list[DeliveryRecord]:
        rows = await self._fetch(LIST_DELIVERIES, webhook_id, state, limit)
        attempts = await self._fetch(LIST_ATTEMPTS, webhook_id, [r["delivery_id"] for r in rows])
        by_delivery: dict[str, list[AttemptRecord]] = {}
        for a in attempts:
            by_delivery.setdefault(a["delivery_id"], []).append(
                AttemptRecord(
                    attempt=a["attempt"],
                    at=a["at"],
                    status_code=a["status_code"],
                    latency_ms=a["latency_ms"],
                    error=a["error"],
                    response_excerpt=a["response_excerpt"],
                )
            )
        return [_delivery(r, tuple(by_delivery.get(r["delivery_id"], ()))) for r in rows]

    async def replay(self, webhook_id: UUID, delivery_id: str) -> DeliveryRecord | None:
        row = await self._fetchrow(REPLAY, webhook_id, delivery_id)
        return None if row is None else _delivery(row)
