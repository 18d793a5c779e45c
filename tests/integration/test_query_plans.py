"""The hot path's look-ups by a batch of execution ids read an index whatever the
planner's statistics say.

A new database (and any table autovacuum has not analyzed yet: the first minute of a
deployment, a burst of new executions) has no statistics, and without them the planner
guesses that an execution id matches 0.5% of a table whose key is not the id alone
(events, state visits): a batch of 30 ids then "matches" 15% of the table, and the
engine's load of a batch read the whole events table, growing with it, for every batch
of triggers (6.7 ms against 1.1 ms at 30,000 events, session 12). Each query here is
planned on tables of 20,000 executions (200,000 events) that were never analyzed, as
the custom plan of a prepared statement's first runs and as the generic plan it may
move to, and must not read any of those tables whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from engine.adapters.store import APPEND_BATCH, ENDED_EXECUTIONS, LOAD_MANY, START_EXECUTIONS
from engine.adapters.webhooks_store import READ_EVENTS
from projections import executions, stats

pytestmark = pytest.mark.asyncio

EXECUTIONS = 20_000
EVENTS_EACH = 10
# The tables a look-up by execution id must never read whole: they grow with every
# execution (events and visits by many rows each).
GROWING = {"events", "executions", "state_visits", "executions_view", "state_stats_progress"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _fill(conn: asyncpg.Connection) -> list[UUID]:
    """EXECUTIONS executions with EVENTS_EACH events, 3 state visits and a read-model
    row each, autovacuum off on every table so that none is analyzed meanwhile."""
    for table in GROWING:
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    ids = [uuid4() for _ in range(EXECUTIONS)]
    await conn.execute(
        """
        INSERT INTO executions (execution_id, workflow, version, name, input, input_hash,
                                started_at)
        SELECT id, 'w', 1, id::text, '{}', '', $2 FROM unnest($1::uuid[]) AS id""",
        ids,
        T0,
    )
    await conn.execute(
        """
        INSERT INTO events (execution_id, seq, type, data, recorded_at)
        SELECT id, seq, 'PassStateEntered', '{}', $3
        FROM unnest($1::uuid[]) AS id CROSS JOIN generate_series(1, $2) AS seq""",
        ids,
        EVENTS_EACH,
        T0,
    )
    await conn.execute(
        """
        INSERT INTO state_visits (execution_id, entered_seq, namespace, workflow, version,
                                  frame, state, entered_at, outcome)
        SELECT id, seq, 'default', 'w', 1, '', 'S', $2,
               CASE WHEN seq = 3 THEN 'running' ELSE 'succeeded' END
        FROM unnest($1::uuid[]) AS id CROSS JOIN generate_series(1, 3) AS seq""",
        ids,
        T0,
    )
    await conn.execute(
        """
        INSERT INTO executions_view (execution_id, namespace, workflow, version, name,
                                     status, input, started_at, last_seq)
        SELECT id, 'default', 'w', 1, id::text, 'RUNNING', '{}', $2, $3
        FROM unnest($1::uuid[]) AS id""",
        ids,
        T0,
        EVENTS_EACH,
    )
    await conn.execute(
        """
        INSERT INTO state_stats_progress (execution_id, namespace, workflow, version, last_seq)
        SELECT id, 'default', 'w', 1, $2 FROM unnest($1::uuid[]) AS id""",
        ids,
        EVENTS_EACH,
    )
    return ids


def _scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(node type, relation) of every node of ``plan`` that reads a relation."""
    if "Relation Name" in plan:
        yield plan["Node Type"], plan["Relation Name"]
    for child in plan.get("Plans", ()):
        yield from _scans(child)


def _batch(ids: list[UUID]) -> list[UUID]:
    return ids[100:130]  # a batch of 30, as the engine's and projectors' are


def _append_arguments(ids: list[UUID]) -> tuple[Any, ...]:
    batch = _batch(ids)
    events = [(i, EVENTS_EACH + 1, "PassStateExited", "{}", T0) for i in batch]
    return (
        batch,
        [EVENTS_EACH] * len(batch),
        *(list(column) for column in zip(*events, strict=True)),
        [],
        [],
        [],
        [],
        [],
    )


def _start_arguments(ids: list[UUID]) -> tuple[Any, ...]:
    new = [uuid4() for _ in range(30)]
    return (
        new,
        ["default"] * 30,
        ["w"] * 30,
        [1] * 30,
        [str(i) for i in new],
        ["{}"] * 30,
        [""] * 30,
        [T0] * 30,
        new,
        [1] * 30,
        ["ExecutionStarted"] * 30,
        ["{}"] * 30,
        [],
        [],
        [],
    )


QUERIES: dict[str, Any] = {
    "the API's starts of a batch (START_EXECUTIONS)": (START_EXECUTIONS, _start_arguments),
    "the check of which executions of a batch ended (ENDED_EXECUTIONS)": (
        ENDED_EXECUTIONS,
        lambda ids: (_batch(ids), ["ExecutionSucceeded", "ExecutionFailed"]),
    ),
    "the engine's load of a batch (LOAD_MANY)": (
        LOAD_MANY,
        lambda ids: (_batch(ids), [EVENTS_EACH - 2] * 30),
    ),
    "the engine's append of a batch (APPEND_BATCH)": (APPEND_BATCH, _append_arguments),
    "the executions projection's rows of a batch": (
        executions.select_batch_sql(),
        lambda ids: (_batch(ids),),
    ),
    "the state statistics' progress of a batch": (
        stats._select_progress("state_stats_progress"),
        lambda ids: (_batch(ids),),
    ),
    "the state statistics' open visits of a batch": (
        stats._select_open("state_visits"),
        lambda ids: (_batch(ids),),
    ),
    "the webhooks' read of the log with each event's execution": (
        READ_EVENTS,
        lambda ids: ("0", 0, 500),
    ),
}


async def test_batch_look_ups_read_an_index_on_tables_never_analyzed(pool: asyncpg.Pool) -> None:
    wrong = []
    async with pool.acquire() as conn:
        ids = await _fill(conn)
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            for name, (sql, arguments) in QUERIES.items():
                async with conn.transaction():
                    rows = await conn.fetch("EXPLAIN (FORMAT JSON) " + sql, *arguments(ids))
                plan = json.loads(rows[0][0])[0]["Plan"]
                scans = list(_scans(plan))
                assert scans, plan
                whole = [t for kind, t in scans if kind == "Seq Scan" and t in GROWING]
                if whole:
                    wrong.append(f"{name} reads {whole} whole ({mode}): {json.dumps(plan)[:1500]}")
        analyzed = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY($1::text[])"
            " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)",
            list(GROWING),
        )
    assert analyzed == 0
    assert not wrong, "\n".join(wrong)
