"""Migration runner contract: each file once, in order, checksummed, under a lock;
and the schema's own guarantee that events are immutable (invariant 1)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg
import msgspec
import pytest

from engine.adapters.store import EventStore, NewEvent
from engine.errors import ExecutionNameConflict
from projections import executions as executions_view
from steplog.migrate import MigrationError, default_migrations_dir, load_migrations, migrate


def all_labels() -> list[str]:
    return [f"{m.version:04d}_{m.name}" for m in load_migrations(default_migrations_dir())]


async def test_applies_every_migration_once_in_order(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await migrate(conn) == all_labels()
        assert await migrate(conn) == []
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        expected = load_migrations(default_migrations_dir())
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in expected
        ]
    finally:
        await conn.close()


async def test_refuses_an_edited_applied_migration(empty_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), directory)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, directory)
        first = sorted(directory.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="edited"):
            await migrate(conn, directory)
    finally:
        await conn.close()


async def test_applies_a_new_file_after_the_old_ones(
    empty_database_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), directory)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, directory)
        (directory / "9999_extra.sql").write_text("CREATE TABLE extra (x int);")
        assert await migrate(conn, directory) == ["9999_extra"]
        assert await conn.fetchval("SELECT count(*) FROM extra") == 0
    finally:
        await conn.close()


async def test_a_failing_migration_is_not_recorded(empty_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_ok.sql").write_text("CREATE TABLE ok (x int);")
    (directory / "0002_bad.sql").write_text("CREATE TABLE half (x int); SELECT nope;")
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await migrate(conn, directory)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
        assert await conn.fetchval("SELECT to_regclass('half')") is None
    finally:
        await conn.close()


def test_refuses_malformed_file_names(tmp_path: Path) -> None:
    (tmp_path / "1_init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_name"):
        load_migrations(tmp_path)


async def test_concurrent_runs_apply_each_file_once(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(5)]
    try:
        barrier = asyncio.Barrier(len(conns))

        async def run(conn: asyncpg.Connection) -> list[str]:
            await barrier.wait()
            return await migrate(conn)

        results = await asyncio.gather(*(run(c) for c in conns))
        assert sorted(label for r in results for label in r) == sorted(all_labels())
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(
            all_labels()
        )
    finally:
        for conn in conns:
            await conn.close()


async def test_events_refuse_update_delete_and_truncate(pool: asyncpg.Pool) -> None:
    execution_id = uuid4()
    await pool.execute(
        "INSERT INTO events (execution_id, seq, type, data, recorded_at)"
        " VALUES ($1, 1, 'ExecutionStarted', '{}', $2)",
        execution_id,
        datetime.now(UTC),
    )
    for statement in (
        "UPDATE events SET type = 'X'",
        "UPDATE events SET data = '{\"a\": 1}' WHERE seq = 1",
        "DELETE FROM events",
        "TRUNCATE events",
    ):
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await pool.execute(statement)
    assert await pool.fetchval("SELECT count(*) FROM events WHERE type = 'ExecutionStarted'") == 1


async def test_embedded_servers_persist_data_and_leave_no_processes(tmp_path: Path) -> None:
    import psutil
    import redis.asyncio as aioredis

    from steplog.embedded import embedded_servers

    data_dir = Path(tempfile.mkdtemp(prefix="steplog-e-"))  # short: sockets live under it
    try:
        pids: list[int] = []
        for run in range(2):
            async with embedded_servers(data_dir, durable=False) as (database_url, redis_url):
                conn = await asyncpg.connect(database_url)
                try:
                    # The second run finds the first run's schema: nothing left to apply.
                    assert (await migrate(conn) == []) is (run == 1)
                finally:
                    await conn.close()
                client = aioredis.Redis.from_url(redis_url)
                try:
                    if run == 0:
                        await client.set("kept", "1")
                    assert await client.get("kept") == b"1"  # append-only file survives
                    pids.append(int((await client.info("server"))["process_id"]))
                finally:
                    await client.aclose()
                postmaster = (data_dir / "pg" / "postmaster.pid").read_text().split()[0]
                pids.append(int(postmaster))
            for pid in pids:
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_0005_turns_jsonb_rows_into_json_and_events_stay_immutable(
    empty_database_url: str, tmp_path: Path
) -> None:
    """Rows written before 0005 (jsonb) survive the change of type with their values;
    the store reads them in the compact rendering of new rows; a start of an old
    execution's name with its input is still the same start; events still refuse
    UPDATE and DELETE."""
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(default_migrations_dir().glob("*.sql")):
        if path.name < "0005":
            shutil.copy(path, before / path.name)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, before)
        execution_id, now = uuid4(), datetime.now(UTC)
        value = {"beta": "x", "id": 1}
        legacy_hash = hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()
        await conn.execute(
            "INSERT INTO workflow_versions (name, version, definition, definition_hash)"
            " VALUES ('wf', 1, '{\"StartAt\": \"A\", \"States\": {}}', 'h')"
        )
        await conn.execute(
            "INSERT INTO executions (execution_id, workflow, version, name, input, input_hash,"
            " started_at) VALUES ($1, 'wf', 1, 'run', $2::text::jsonb, $3, $4)",
            execution_id,
            '{"beta": "x", "id": 1}',
            legacy_hash,
            now,
        )
        await conn.execute(
            "INSERT INTO events (execution_id, seq, type, data, recorded_at)"
            " VALUES ($1, 1, 'ExecutionStarted', $2::text::jsonb, $3)",
            execution_id,
            '{"type": "ExecutionStarted", "input": {"beta": "x", "id": 1}}',
            now,
        )
        # Text that looks like jsonb's spacing inside strings, escapes, empty containers.
        tricky = (
            '{"type": "PassStateExited", "output": {"s": "a, b: c \\"q\\" \\u00e9\\n",'
            ' "e": {}, "l": [], "n": [1.50, -0, 1e3, true, null], "o": {"k": {"": [[]]}}}}'
        )
        await conn.execute(
            "INSERT INTO events (execution_id, seq, type, data, recorded_at)"
            " VALUES ($1, 2, 'PassStateExited', $2::text::jsonb, $3)",
            execution_id,
            tricky,
            now,
        )
        jsonb_text = await conn.fetchval("SELECT data::text FROM events WHERE seq = 2")
        compact = msgspec.json.format(jsonb_text.encode(), indent=-1)
        assert compact != jsonb_text.encode()
        await conn.execute(
            "INSERT INTO executions_view (execution_id, workflow, version, name, status, input,"
            " error, started_at) VALUES ($1, 'wf', 1, 'run', 'FAILED', '[1, 2]', 'Boom', $2)",
            execution_id,
            now,
        )

        # 0005 runs over the jsonb rows (later migrations follow it).
        assert (await migrate(conn))[0] == "0005_json_as_sent"

        types = {
            (r["table_name"], r["column_name"]): r["data_type"]
            for r in await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public'"
            )
        }
        for column in (
            ("events", "data"),
            ("executions", "input"),
            ("workflow_versions", "definition"),
            ("executions_view", "input"),
            ("executions_view", "output"),
            ("executions_view", "error"),
            ("executions_view", "cause"),
        ):
            assert types[column] == "json", column
        for statement in (
            "UPDATE events SET type = 'X'",
            "DELETE FROM events",
            "UPDATE workflow_versions SET version = 2",
        ):
            with pytest.raises(asyncpg.RaiseError, match="immutable"):
                await conn.execute(statement)
    finally:
        await conn.close()

    pool = await asyncpg.create_pool(empty_database_url, min_size=1, max_size=2)
    try:
        store = EventStore(pool)
        # jsonb had already put the shorter key first; the spacing is the new rows' one.
        started, tricky_event = await store.load(execution_id)
        assert started.data == b'{"type":"ExecutionStarted","input":{"id":1,"beta":"x"}}'
        assert tricky_event.data == compact
        assert msgspec.json.decode(compact) == msgspec.json.decode(tricky)
        record = await store.get_execution(execution_id)
        assert record is not None and record.input_json == b'{"id":1,"beta":"x"}'
        workflow = await store.get_workflow("default", "wf")
        assert workflow is not None and workflow.definition == {"StartAt": "A", "States": {}}
        row = await executions_view.get_row(pool, execution_id)
        assert row is not None and (row.input, row.error, row.cause) == ("[1,2]", "Boom", None)
        # Its recorded hash is of the value: the same value in any order is the same start.
        again, created = await store.start_execution(
            "default",
            "wf",
            1,
            uuid4(),
            "run",
            b'{"beta":"x","id":1}',
            NewEvent("ExecutionStarted", b'{"type":"ExecutionStarted"}', now),
        )
        assert (again.execution_id, created) == (execution_id, False)
        with pytest.raises(ExecutionNameConflict):
            await store.start_execution(
                "default",
                "wf",
                1,
                uuid4(),
                "run",
                b'{"beta":"y","id":1}',
                NewEvent("ExecutionStarted", b'{"type":"ExecutionStarted"}', now),
            )
    finally:
        await pool.close()
