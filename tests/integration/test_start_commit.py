"""StartCommit: concurrent starts share one statement and one commit, and each caller
gets what `EventStore.start_execution(..., latest_only=True)` alone would give it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import uuid4

import asyncpg
import msgspec
import pytest

from engine.adapters.group_commit import StartCommit
from engine.adapters.store import EventStore, NewEvent, NotLatestVersion, StartRequest
from engine.errors import ExecutionNameConflict, InvalidRequest

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DEFINITION = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}


def request(name: str, input_json: bytes = b"{}", version: int = 1) -> StartRequest:
    started = NewEvent("ExecutionStarted", msgspec.json.encode({"type": "ExecutionStarted"}), T0)
    then = [NewEvent("PassStateEntered", b'{"type":"PassStateEntered","name":"A"}', T0)]
    return StartRequest("default", "wf", version, uuid4(), name, input_json, started, then)


async def test_concurrent_starts_share_one_commit(store: EventStore, pool: asyncpg.Pool) -> None:
    await store.put_workflow("default", "wf", DEFINITION)
    starts = StartCommit(store)
    requests = [request(f"e{i}") for i in range(30)]
    outcomes = await asyncio.gather(*(starts.start(r) for r in requests))
    assert [created for _, created in outcomes] == [True] * 30
    assert [record.execution_id for record, _ in outcomes] == [r.execution_id for r in requests]
    # One transaction wrote them all (a first lone start may have had its own).
    transactions = await pool.fetchval("SELECT count(DISTINCT tx_id) FROM events WHERE seq = 1")
    assert transactions <= 2
    for r in requests[:3]:
        assert [e.type for e in await store.load(r.execution_id)] == [
            "ExecutionStarted",
            "PassStateEntered",
        ]


async def test_each_start_of_a_batch_gets_its_own_answer(store: EventStore) -> None:
    await store.put_workflow("default", "wf", DEFINITION)
    starts = StartCommit(store)
    first = request("same", b'{"a": 1}')
    again = request("same", b'{"a":1}')  # the same start (up to whitespace)
    other = request("same", b'{"a": 2}')  # the name with another input
    bad = request("bad", b"{not json")
    old = request("old", version=0)  # not the latest version
    fine = request("fine")
    outcomes = await asyncio.gather(
        *(starts.start(r) for r in (first, again, other, bad, old, fine)),
        return_exceptions=True,
    )
    created, repeated = outcomes[0], outcomes[1]
    assert isinstance(created, tuple) and created[1] is True
    assert isinstance(repeated, tuple) and repeated == (created[0], False)
    assert isinstance(outcomes[2], ExecutionNameConflict)
    assert isinstance(outcomes[3], InvalidRequest)
    assert isinstance(outcomes[4], NotLatestVersion) and outcomes[4].latest == 1
    assert isinstance(outcomes[5], tuple) and outcomes[5][1] is True
    assert await store.find_execution("default", "wf", "bad") is None
    assert await store.find_execution("default", "wf", "old") is None


async def test_a_caller_that_gives_up_mid_statement_starts_nothing(
    store: EventStore, database_url: str
) -> None:
    await store.put_workflow("default", "wf", DEFINITION)
    starts = StartCommit(store)
    locker = await asyncpg.connect(database_url)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        requests = [request(f"w{i}") for i in range(3)]
        waiting = [asyncio.ensure_future(starts.start(r)) for r in requests]
        await asyncio.sleep(0.3)  # the batch's statement waits for the lock
        waiting[1].cancel()
        await asyncio.sleep(0.1)
        await transaction.rollback()
        kept = await asyncio.gather(waiting[0], waiting[2])
        assert [created for _, created in kept] == [True, True]
        with pytest.raises(asyncio.CancelledError):
            await waiting[1]
    finally:
        await locker.close()
    # The cancelled start's statement was rolled back: its name is still free.
    assert await store.find_execution("default", "wf", "w1") is None
    assert await store.find_execution("default", "wf", "w0") is not None
