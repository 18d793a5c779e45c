"""EventStore contract suite on a real PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest

from engine.adapters.group_commit import GroupCommit
from engine.adapters.postgres import LeanPool, open_pool, session, translate_errors
from engine.adapters.store import (
    AppendRequest,
    EventStore,
    GlobalPosition,
    NewEvent,
    NotLatestVersion,
    StoredEvent,
    TimerSpec,
)
from engine.errors import (
    ConcurrencyError,
    ExecutionNameConflict,
    InvalidData,
    InvalidRequest,
    Unavailable,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DEFINITION = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}


def event(type_: str = "PassStateEntered", **data: object) -> NewEvent:

    return NewEvent(type_, msgspec.json.encode({"type": type_, **data}), T0)


async def start(store: EventStore, name: str = "run", input_json: bytes = b"{}") -> UUID:
    record, created = await store.start_execution(
        "default", "wf", 1, uuid4(), name, input_json, event("ExecutionStarted")
    )
    assert created
    return record.execution_id


# -- workflows ----------------------------------------------------------------------------


async def test_a_start_of_a_version_that_is_not_the_latest_writes_nothing(
    store: EventStore,
) -> None:
    started = event("ExecutionStarted")
    with pytest.raises(NotLatestVersion) as none:  # no workflow at all
        await store.start_execution(
            "default", "wf", 1, uuid4(), "a", b"{}", started, latest_only=True
        )
    assert none.value.latest is None
    await store.put_workflow("default", "wf", DEFINITION)
    await store.put_workflow("default", "wf", {**DEFINITION, "Comment": "v2"})
    with pytest.raises(NotLatestVersion) as old:
        await store.start_execution(
            "default", "wf", 1, uuid4(), "a", b"{}", started, latest_only=True
        )
    assert old.value.latest == 2
    assert await store.find_execution("default", "wf", "a") is None
    record, created = await store.start_execution(
        "default", "wf", 2, uuid4(), "a", b"{}", started, latest_only=True
    )
    assert created and record.version == 2
    # The name exists: the same start again answers with it, as without latest_only.
    again, created = await store.start_execution(
        "default", "wf", 2, uuid4(), "a", b"{}", started, latest_only=True
    )
    assert (again.execution_id, created) == (record.execution_id, False)


async def test_put_workflow_versions_only_on_change(store: EventStore) -> None:
    v1, created = await store.put_workflow("default", "wf", DEFINITION)
    assert (v1.version, created, v1.definition) == (1, True, DEFINITION)

    same, created = await store.put_workflow("default", "wf", dict(DEFINITION))
    assert (same.version, created) == (1, False)

    changed = {**DEFINITION, "Comment": "v2"}
    v2, created = await store.put_workflow("default", "wf", changed)
    assert (v2.version, created) == (2, True)

    assert (await store.get_workflow("default", "wf")) == v2
    assert (await store.get_workflow("default", "wf", 1)) == v1
    assert await store.get_workflow("default", "wf", 3) is None
    assert await store.get_workflow("other", "wf") is None


async def test_a_definition_is_kept_in_the_order_registered(store: EventStore) -> None:
    # Key order is part of a definition: a Result or Parameters template in another
    # order gives output in another order (States.JsonToString tells them apart).
    await store.put_workflow("default", "wf", DEFINITION)
    reordered = {"States": {"A": {"End": True, "Type": "Pass"}}, "StartAt": "A"}
    v2, created = await store.put_workflow("default", "wf", reordered)
    assert (v2.version, created) == (2, True)
    for version, sent in ((1, DEFINITION), (2, reordered)):
        stored = await store.get_workflow("default", "wf", version)
        assert stored is not None
        assert msgspec.json.encode(stored.definition) == msgspec.json.encode(sent)
    again, created = await store.put_workflow("default", "wf", reordered)
    assert (again.version, created) == (2, False)


async def test_list_workflows_gives_latest_version_per_name(store: EventStore) -> None:
    await store.put_workflow("default", "b", DEFINITION)
    await store.put_workflow("default", "a", DEFINITION)
    await store.put_workflow("default", "a", {**DEFINITION, "Comment": "2"})
    await store.put_workflow("other", "c", DEFINITION)
    listed = await store.list_workflows("default")
    assert [(w.name, w.version) for w in listed] == [("a", 2), ("b", 1)]


async def test_concurrent_puts_of_one_definition_make_one_version(store: EventStore) -> None:
    results = await asyncio.gather(
        *(store.put_workflow("default", "wf", DEFINITION) for _ in range(10))
    )
    assert sum(created for _, created in results) == 1
    assert {v.version for v, _ in results} == {1}


# -- executions ---------------------------------------------------------------------------


async def test_start_execution_writes_record_and_first_event(store: EventStore) -> None:
    execution_id = uuid4()
    record, created = await store.start_execution(
        "default", "wf", 1, execution_id, "run", b'{"x": 1}', event("ExecutionStarted")
    )
    assert created and record.execution_id == execution_id and record.started_at == T0
    # Kept as sent without insignificant whitespace.
    assert record.input_json == b'{"x":1}'
    assert await store.get_execution(execution_id) == record.__class__(
        execution_id, "default", "wf", 1, "run", b'{"x":1}', T0
    )
    (first,) = await store.load(execution_id)
    assert (first.seq, first.type, first.timestamp) == (1, "ExecutionStarted", T0)
    assert await store.get_execution(uuid4()) is None


async def test_same_name_same_input_returns_the_existing_execution(store: EventStore) -> None:
    first = await start(store, "run", b'{"a": 1, "b": [1, 2]}')
    again, created = await store.start_execution(
        "default", "wf", 1, uuid4(), "run", b'{"a":1,\n "b":[1,2]}', event("ExecutionStarted")
    )
    assert (again.execution_id, created) == (first, False)
    # Another key order or number spelling is another input (States.JsonToString differs).
    for other in (b'{"a": 2}', b'{"b":[1,2],"a":1}', b'{"a":1.0,"b":[1,2]}'):
        with pytest.raises(ExecutionNameConflict):
            await store.start_execution(
                "default", "wf", 1, uuid4(), "run", other, event("ExecutionStarted")
            )
    # The name is unique per (namespace, workflow) only.
    _, created = await store.start_execution(
        "default", "other", 1, uuid4(), "run", b"{}", event("ExecutionStarted")
    )
    assert created


async def test_fifty_concurrent_starts_of_one_name_make_one_execution(store: EventStore) -> None:
    barrier = asyncio.Barrier(50)

    async def start_one() -> tuple[UUID, bool]:
        await barrier.wait()
        record, created = await store.start_execution(
            "default", "wf", 1, uuid4(), "same", b'{"k": "v"}', event("ExecutionStarted")
        )
        return record.execution_id, created

    results = await asyncio.gather(*(start_one() for _ in range(50)))
    assert sum(created for _, created in results) == 1
    assert len({execution_id for execution_id, _ in results}) == 1
    assert len(await store.load(results[0][0])) == 1


async def test_concurrent_starts_with_different_inputs_conflict(store: EventStore) -> None:
    barrier = asyncio.Barrier(20)

    async def start_one(i: int) -> str:
        await barrier.wait()
        try:
            await store.start_execution(
                "default",
                "wf",
                1,
                uuid4(),
                "same",
                b'{"i": %d}' % (i % 2),
                event("ExecutionStarted"),
            )
        except ExecutionNameConflict:
            return "conflict"
        return "ok"

    outcomes = await asyncio.gather(*(start_one(i) for i in range(20)))
    assert outcomes.count("ok") == 10 and outcomes.count("conflict") == 10


@pytest.mark.parametrize("bad", [b"{not json", b'"\xff"', b"\xff", b'{"a":1', b'"\\ud800"'])
async def test_bad_input_is_refused_and_changes_nothing(store: EventStore, bad: bytes) -> None:
    with pytest.raises(InvalidRequest):
        await store.start_execution(
            "default", "wf", 1, uuid4(), "run", bad, event("ExecutionStarted")
        )
    assert await store.read_all(GlobalPosition(), 10) == []


async def test_input_and_event_json_are_kept_as_written(store: EventStore) -> None:
    # Key order, number spelling, escapes (NUL included) and duplicate keys: the json
    # columns keep the text (jsonb re-ordered keys and wrote 1e308 as 309 digits).
    document = b'{"id":1,"beta":"x","n":11,"big":1e308,"f":1.50,"z":"a\\u0000b","d":1,"d":2}'
    record, _ = await store.start_execution(
        "default",
        "wf",
        1,
        uuid4(),
        "run",
        document,
        NewEvent("ExecutionStarted", b'{"type":"ExecutionStarted","input":' + document + b"}", T0),
    )
    stored = await store.get_execution(record.execution_id)
    assert stored is not None and stored.input_json == document
    data = b'{"type":"PassStateExited","name":"\\u0000","output":{"b":1E2,"a":[1.0]}}'
    await store.append(record.execution_id, 1, [NewEvent("PassStateExited", data, T0)])
    first, second = await store.load(record.execution_id)
    assert first.data == b'{"type":"ExecutionStarted","input":' + document + b"}"
    assert second.data == data
    assert [e.data for e in await store.read_all(GlobalPosition(), 10)] == [first.data, data]


async def test_running_executions_excludes_terminal_ones(store: EventStore) -> None:
    running = await start(store, "a")
    done = await start(store, "b")
    await store.append(done, 1, [event("ExecutionSucceeded")])
    await store.append(running, 1, [event()])
    assert await store.running_executions() == [running]
    assert await store.running_executions("default") == [running]
    assert await store.running_executions("elsewhere") == []


# -- events -------------------------------------------------------------------------------


async def test_append_continues_seq_and_load_reads_ranges(store: EventStore) -> None:
    execution_id = await start(store)
    stored = await store.append(execution_id, 1, [event(n=i) for i in range(2, 6)])
    assert [e.seq for e in stored] == [2, 3, 4, 5]
    positions = [e.position for e in stored]
    assert positions == sorted(positions) and len({e.tx_id for e in stored}) == 1

    assert [e.seq for e in await store.load(execution_id)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await store.load(execution_id, after_seq=2)] == [3, 4, 5]
    assert [e.seq for e in await store.load(execution_id, after_seq=1, upto_seq=3)] == [2, 3]
    assert [e.seq for e in await store.load(execution_id, limit=2)] == [1, 2]
    assert [e.seq for e in await store.load(execution_id, limit=2, reverse=True)] == [5, 4]
    assert [e.seq for e in await store.load(execution_id, upto_seq=3, reverse=True)] == [3, 2, 1]
    loaded = await store.load(execution_id, after_seq=1, upto_seq=2)
    assert loaded[0].position == stored[0].position and loaded[0].type == "PassStateEntered"


async def test_load_for_fold_reads_the_data_and_times_load_reads(store: EventStore) -> None:
    execution_id = await start(store)
    await store.append(execution_id, 1, [event(n=i) for i in range(2, 6)])
    for after, upto in ((0, None), (2, None), (1, 3), (5, None)):
        events = await store.load(execution_id, after_seq=after, upto_seq=upto)
        data, times = await store.load_for_fold(execution_id, after, upto)
        assert [d.encode() for d in data] == [e.data for e in events]
        assert times == [e.timestamp for e in events]
    assert await store.load_for_fold(uuid4()) == ([], [])


async def test_append_at_a_taken_seq_raises_concurrency_error(store: EventStore) -> None:
    execution_id = await start(store)
    await store.append(execution_id, 1, [event()])
    with pytest.raises(ConcurrencyError):
        await store.append(execution_id, 1, [event()])


async def test_append_past_the_end_raises_and_leaves_no_gap(store: EventStore) -> None:
    execution_id = await start(store)
    with pytest.raises(ConcurrencyError):
        await store.append(execution_id, 3, [event()])
    assert [e.seq for e in await store.load(execution_id)] == [1]


async def test_same_seq_appends_on_a_barrier_exactly_one_wins(store: EventStore) -> None:
    execution_id = await start(store)
    barrier = asyncio.Barrier(10)

    async def append_one(i: int) -> bool:
        await barrier.wait()
        try:
            await store.append(execution_id, 1, [event(writer=i), event(writer=i)])
        except ConcurrencyError:
            return False
        return True

    wins = await asyncio.gather(*(append_one(i) for i in range(10)))
    assert sum(wins) == 1
    events = await store.load(execution_id)
    assert [e.seq for e in events] == [1, 2, 3]


async def test_append_writes_timer_changes_in_the_same_transaction(store: EventStore) -> None:
    execution_id = await start(store)
    due = T0 + timedelta(seconds=5)
    await store.append(
        execution_id, 1, [event()], set_timers=[TimerSpec("t1", due), TimerSpec("t2", due)]
    )
    timers = await store.due_timers(due, 10)
    assert [(t.timer_id, t.execution_id, t.due_at) for t in timers] == [
        ("t1", execution_id, due),
        ("t2", execution_id, due),
    ]
    assert await store.due_timers(T0, 10) == []

    # A losing append changes no timers.
    with pytest.raises(ConcurrencyError):
        await store.append(execution_id, 1, [event()], cancel_timers=["t1"])
    assert len(await store.due_timers(due, 10)) == 2

    await store.append(
        execution_id, 2, [event()], cancel_timers=["t1"], set_timers=[TimerSpec("t3", T0)]
    )
    assert [t.timer_id for t in await store.due_timers(due, 10)] == ["t3", "t2"]
    assert await store.delete_timer("t2") is True
    assert await store.delete_timer("t2") is False
    await store.append(execution_id, 3, [], cancel_timers=["t3"])
    assert await store.due_timers(due, 10) == []


async def test_append_batch_checks_each_execution_alone(store: EventStore) -> None:
    a, b, c = [await start(store, f"run-{i}") for i in range(3)]
    await store.append(b, 1, [event()])  # b moved on: its request is stale
    due = T0 + timedelta(seconds=5)
    results = await store.append_batch(
        [
            AppendRequest(a, 1, [event(n=2), event(n=3)], set_timers=[TimerSpec("a:t", due)]),
            AppendRequest(b, 1, [event()], set_timers=[TimerSpec("b:t", due)]),
            AppendRequest(c, 3, [event()]),  # c has not reached seq 3
        ]
    )
    stored_a, conflict_b, conflict_c = results
    assert isinstance(stored_a, list) and [e.seq for e in stored_a] == [2, 3]
    assert isinstance(conflict_b, ConcurrencyError) and isinstance(conflict_c, ConcurrencyError)
    assert [e.seq for e in await store.load(a)] == [1, 2, 3]
    assert [e.seq for e in await store.load(b)] == [1, 2]
    assert [e.seq for e in await store.load(c)] == [1]
    # Only the appended execution's timer changes were applied.
    assert [t.timer_id for t in await store.due_timers(due, 10)] == ["a:t"]
    results = await store.append_batch(
        [AppendRequest(a, 3, [event()], cancel_timers=["a:t"]), AppendRequest(b, 2, [event()])]
    )
    assert [[e.seq for e in r] for r in results if isinstance(r, list)] == [[4], [3]]
    assert await store.due_timers(due, 10) == []


async def test_append_batch_refused_data_fails_only_its_request(store: EventStore) -> None:
    a, b = [await start(store, f"run-{i}") for i in range(2)]
    bad = NewEvent("PassStateEntered", b"\xff", T0)  # not UTF-8
    good, refused = await store.append_batch(
        [AppendRequest(a, 1, [event()]), AppendRequest(b, 1, [bad])]
    )
    assert isinstance(good, list) and [e.seq for e in good] == [2]
    assert isinstance(refused, InvalidRequest)
    assert [e.seq for e in await store.load(b)] == [1]


async def test_group_commit_racing_single_appends_exactly_one_wins_per_seq(
    store: EventStore,
) -> None:
    executions = [await start(store, f"run-{i}") for i in range(10)]
    group = GroupCommit(store)
    barrier = asyncio.Barrier(20)

    async def append_one(execution_id: UUID, grouped: bool) -> bool:
        await barrier.wait()
        append = group.append if grouped else store.append
        try:
            await append(execution_id, 1, [event(), event()])
        except ConcurrencyError:
            return False
        return True

    wins = await asyncio.gather(
        *(append_one(eid, grouped) for eid in executions for grouped in (True, False))
    )
    assert [wins[i] + wins[i + 1] for i in range(0, 20, 2)] == [1] * 10
    for eid in executions:
        assert [e.seq for e in await store.load(eid)] == [1, 2, 3]


async def test_group_commit_batches_concurrent_appends_into_one_transaction(
    store: EventStore,
) -> None:
    executions = [await start(store, f"run-{i}") for i in range(5)]
    group = GroupCommit(store)
    stored = await asyncio.gather(*(group.append(eid, 1, [event()]) for eid in executions))
    assert len({s[0].tx_id for s in stored}) == 1
    # Two appends of one execution go in order, in two batches.
    first, second = await asyncio.gather(
        group.append(executions[0], 2, [event()]), group.append(executions[0], 3, [event()])
    )
    assert (first[0].seq, second[0].seq) == (3, 4)
    with pytest.raises(ConcurrencyError):
        await group.append(executions[1], 1, [event()])


async def test_load_many_reads_each_execution_after_its_own_seq(store: EventStore) -> None:
    a, b = [await start(store, f"run-{i}") for i in range(2)]
    await store.append(a, 1, [event(), event()])
    unknown = uuid4()
    loaded = await store.load_many({a: 1, b: 0, unknown: 0})
    assert {eid: [e.seq for e in events] for eid, events in loaded.items()} == {
        a: [2, 3],
        b: [1],
        unknown: [],
    }


async def test_append_notifies_the_channel(
    store: EventStore, pool: asyncpg.Pool, eventually
) -> None:  # type: ignore[no-untyped-def]
    execution_id = await start(store)
    received: list[str] = []

    def listener(*args: object) -> None:
        received.append(str(args[2]))

    async def notified() -> bool:
        return bool(received)

    async with pool.acquire() as conn:
        await conn.add_listener(store.notify_channel, listener)
        try:
            await store.append(execution_id, 1, [event()])
            await eventually(notified)
        finally:
            await conn.remove_listener(store.notify_channel, listener)
    assert received[0] == store.notify_channel


# -- global order -------------------------------------------------------------------------


async def test_read_all_pages_in_global_order(store: EventStore) -> None:
    a = await start(store, "a")
    b = await start(store, "b")
    await store.append(a, 1, [event(), event()])
    await store.append(b, 1, [event()])
    everything = await store.read_all(GlobalPosition(), 100)
    assert [(e.execution_id, e.seq) for e in everything] == [(a, 1), (b, 1), (a, 2), (a, 3), (b, 2)]
    page, rest = everything[:2], everything[2:]
    assert await store.read_all(GlobalPosition(), 2) == page
    assert await store.read_all(page[-1].global_position, 100) == rest
    assert await store.read_all(everything[-1].global_position, 100) == []


INSERT_RAW = (
    "INSERT INTO events (execution_id, seq, type, data, recorded_at)"
    " VALUES ($1, $2, 'PassStateEntered', '{}', now())"
)


async def test_read_all_holds_back_events_behind_an_open_transaction(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    a = await start(store, "a")
    b = await start(store, "b")
    after = (await store.read_all(GlobalPosition(), 100))[-1].global_position

    slow = await pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute(INSERT_RAW, a, 2)  # takes the smaller position, commits last
        (fast,) = await store.append(b, 1, [event()])  # larger position, committed first

        assert await store.read_all(after, 100) == []  # a naive tail would return b and skip a
        await tx.commit()
    finally:
        await pool.release(slow)

    seen = await store.read_all(after, 100)
    assert [(e.execution_id, e.seq) for e in seen] == [(a, 2), (b, 2)]
    assert seen[0].position < fast.position == seen[1].position


async def test_read_all_orders_by_transaction_when_position_is_taken_late(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    a = await start(store, "a")
    b = await start(store, "b")
    after = (await store.read_all(GlobalPosition(), 100))[-1].global_position
    slow = await pool.acquire()
    try:
        async with slow.transaction():
            await slow.execute("SELECT pg_current_xact_id()")  # the transaction id comes first
            await store.append(b, 1, [event()])
            assert await store.read_all(after, 100) == []
            await slow.execute(INSERT_RAW, a, 2)  # ... its position last
    finally:
        await pool.release(slow)
    seen = await store.read_all(after, 100)
    assert [(e.execution_id, e.seq) for e in seen] == [(a, 2), (b, 2)]
    assert seen[0].position > seen[1].position


async def test_tailing_reader_sees_every_event_once_while_writers_commit_out_of_order(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    executions = [await start(store, f"e{i}") for i in range(6)]
    rng = random.Random(7)
    per_execution = 15

    async def writer(execution_id: UUID) -> None:
        for seq in range(2, per_execution + 2):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(INSERT_RAW, execution_id, seq)
                await asyncio.sleep(rng.random() * 0.004)  # commit late, out of order

    seen: list[StoredEvent] = []
    position = GlobalPosition()
    writers = asyncio.gather(*(writer(x) for x in executions))
    while not writers.done():
        page = await store.read_all(position, 7)
        if page:
            seen.extend(page)
            position = page[-1].global_position
        await asyncio.sleep(0.001)
    await writers
    while page := await store.read_all(position, 100):
        seen.extend(page)
        position = page[-1].global_position

    keys = [(e.execution_id, e.seq) for e in seen]
    assert len(keys) == len(set(keys)) == len(executions) * (per_execution + 1)
    for execution_id in executions:
        assert [s for x, s in keys if x == execution_id] == list(range(1, per_execution + 2))


async def test_ping(store: EventStore) -> None:
    assert await store.ping() is True


async def test_a_server_that_does_not_answer_is_unavailable(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    store = EventStore(pool)
    await pool.close()

    with pytest.raises(Unavailable) as raised:
        await store.get_execution(uuid4())
    with pytest.raises(Unavailable):
        await store.put_workflow("default", "wf", DEFINITION)

    assert isinstance(raised.value.__cause__, asyncpg.InterfaceError)


async def test_opening_a_pool_to_nothing_is_unavailable() -> None:
    # Port 1 on localhost: nothing listens there, connecting is refused at once.
    with pytest.raises(Unavailable) as raised:
        await open_pool("postgresql://steplog@127.0.0.1:1/steplog", min_size=1, max_size=1)

    assert isinstance(raised.value.__cause__, OSError)


async def test_session_state_never_outlives_a_session_connection(database_url: str) -> None:
    # One connection, so whatever the session left behind would be seen by the next user.
    pool = await open_pool(database_url, min_size=1, max_size=1)
    try:
        async with session(pool) as conn:
            await conn.execute("SET statement_timeout = 1234")
            await conn.execute("SELECT pg_advisory_lock(4242)")
            await conn.execute("LISTEN steplog_session_test")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "0"
            locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            assert await conn.fetchval(locks) == 0
            assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
        # A plain pooled call that changes settings only for its transaction leaves none.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 4321")
        assert await pool.fetchval("SHOW statement_timeout") == "0"
    finally:
        await pool.close()


async def test_the_pool_gives_connections_back_at_once_and_cleans_up_what_needs_it(
    database_url: str,
) -> None:
    # LeanPool: an idle connection goes back within release itself (no Task, nothing
    # awaited); one left in a transaction, or closed, goes through asyncpg's release.
    pool = await open_pool(database_url, min_size=1, max_size=1)
    try:
        assert isinstance(pool, LeanPool) and pool._lean
        for _ in range(3):
            async with pool.acquire() as conn:
                backend = await conn.fetchval("SELECT pg_backend_pid()")
                proxy = conn
            assert pool.get_idle_size() == 1
            with pytest.raises(asyncpg.InterfaceError):  # the caller's handle is detached
                await proxy.fetchval("SELECT 1")
        assert await pool.fetchval("SELECT pg_backend_pid()") == backend  # the same one
        # The release of an idle connection completes without suspending once.
        conn = await pool.acquire()
        release = pool.release(conn)
        with pytest.raises(StopIteration):
            release.send(None)
        assert pool.get_idle_size() == 1
        # Given back inside a transaction it began without asyncpg's manager: asyncpg's
        # release rolls it back, and the next user starts outside any transaction.
        conn = await pool.acquire()
        await conn.execute("BEGIN; CREATE TEMP TABLE lean_pool_probe (x int)")
        await pool.release(conn)
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('lean_pool_probe')") is None
        # A caller cancelled while it holds a connection still gives it back.
        holding = asyncio.Event()

        async def hold() -> None:
            async with pool.acquire() as held:
                await held.fetchval("SELECT 1")
                holding.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(hold())
        await holding.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.get_idle_size() == 1
        # A connection closed under the pool is replaced, not handed out again.
        conn = await pool.acquire()
        conn.terminate()
        await pool.release(conn)
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_value_postgresql_cannot_take_is_invalid_data_not_unavailable(
    store: EventStore,
) -> None:
    # Beyond int32: the driver refuses to encode it. Deterministic, so never retried
    # as an outage would be.
    with pytest.raises(InvalidData) as raised:
        await store.load(uuid4(), after_seq=2**40)

    assert raised.value.__cause__ is not None
    assert not isinstance(raised.value, Unavailable)


async def test_a_read_only_database_is_unavailable(database_url: str) -> None:
    # A standby, or a primary put in read-only mode: writes are refused "for now".
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET default_transaction_read_only = on")
        with pytest.raises(Unavailable) as raised:
            with translate_errors():
                await conn.execute("CREATE TABLE steplog_read_only_probe (x int)")
    finally:
        await conn.close()
    assert isinstance(raised.value.__cause__, asyncpg.ReadOnlySQLTransactionError)
