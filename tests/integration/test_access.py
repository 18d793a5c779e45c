"""Keys, namespaces and the audit trail on a real PostgreSQL (engine/access.py,
engine/adapters/access.py, migration 0006) and through the steplog command."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from engine.access import Access, Actor, redact
from engine.adapters.access import AccessStore, KeySecret
from engine.errors import InvalidRequest, KeyNotFound, NamespaceNotFound, Unauthenticated
from steplog.settings import Settings
from tests.conftest import Eventually
from tests.integration.test_cli import _steplog

ACTOR = Actor(key_id=None, namespace=None, remote="test")


async def test_only_a_hash_of_the_secret_is_stored(pool: asyncpg.Pool) -> None:
    access = Access.over(pool)
    record, token = await access.create_key(namespace="default", role="reader", actor=ACTOR)
    _, key_id, secret = token.split("_")
    assert record.key_id == key_id and len(secret) == 64
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).digest()
    assert secret not in str(dict(row))
    assert token.startswith(row["prefix"]) and secret[4:] not in row["prefix"]


async def test_authentication_refuses_wrong_revoked_and_expired_keys(pool: asyncpg.Pool) -> None:
    access = Access.over(pool)
    record, token = await access.create_key(namespace="default", role="operator", actor=ACTOR)
    principal = await access.authenticate(token)
    assert (principal.key_id, principal.namespace, principal.role) == (
        record.key_id,
        "default",
        "operator",
    )
    wrong = token[:-1] + ("0" if token[-1] != "0" else "1")
    for bad in (wrong, "slk_" + "0" * 16 + "_" + "0" * 64, "slk_x", "", token + " "):
        with pytest.raises(Unauthenticated):
            await access.authenticate(bad)
    _, expired = await access.create_key(
        namespace="default",
        role="admin",
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
        actor=ACTOR,
    )
    with pytest.raises(Unauthenticated, match="expired"):
        await access.authenticate(expired)
    await access.revoke_key(record.key_id, None, ACTOR)
    with pytest.raises(Unauthenticated, match="revoked"):
        await access.authenticate(token)


async def test_last_used_at_is_written_at_most_once_a_minute_per_key(pool: asyncpg.Pool) -> None:
    access = Access.over(pool)
    record, token = await access.create_key(namespace="default", role="reader", actor=ACTOR)
    await access.authenticate(token)
    first = await pool.fetchval(
        "SELECT last_used_at FROM api_keys WHERE key_id = $1", record.key_id
    )
    assert first is not None
    for _ in range(20):
        await access.authenticate(token)
    assert (
        await pool.fetchval("SELECT last_used_at FROM api_keys WHERE key_id = $1", record.key_id)
        == first
    )


async def test_keys_and_namespaces_are_checked_and_audited(pool: asyncpg.Pool) -> None:
    access = Access.over(pool)
    with pytest.raises(NamespaceNotFound):
        await access.create_key(namespace="nowhere", role="reader", actor=ACTOR)
    with pytest.raises(InvalidRequest):
        await access.create_key(namespace=None, role="reader", actor=ACTOR)
    with pytest.raises(InvalidRequest):
        await access.create_namespace("bad name", ACTOR)
    with pytest.raises(KeyNotFound):
        await access.revoke_key("0" * 16, None, ACTOR)
    ns, created = await access.create_namespace("team-a", ACTOR)
    assert created and ns.name == "team-a"
    assert (await access.create_namespace("team-a", ACTOR))[1] is False
    record, _ = await access.create_key(namespace="team-a", role="reader", actor=ACTOR)
    # A namespace's admin cannot revoke another namespace's key.
    with pytest.raises(KeyNotFound):
        await access.revoke_key(record.key_id, "default", ACTOR)
    await access.revoke_key(record.key_id, "team-a", ACTOR)
    trail = await access.audit_trail(None, None, 10)
    assert [(e.action, e.target) for e in trail] == [
        ("key.revoke", record.key_id),
        ("key.create", record.key_id),
        ("namespace.create", "team-a"),
    ]
    assert all(e.remote == "test" for e in trail)


async def test_the_audit_trail_refuses_update_and_delete(pool: asyncpg.Pool) -> None:
    access = Access.over(pool)
    await access.record(ACTOR, "execution.stop", "x")
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await pool.execute(statement)
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await pool.execute("TRUNCATE audit_log")


def test_redact_hides_the_secret_of_a_key() -> None:
    token = "slk_0123456789abcdef_" + "ab" * 32
    text = redact(f"Authorization: Bearer {token}")
    assert "ab" * 32 not in text and "slk_0123456789abcdef_" in text


async def test_the_keys_and_namespaces_commands(settings: Settings) -> None:
    code, out, err = await _steplog(settings, "namespaces", "create", "team-b")
    assert code == 0, err
    assert out == "created team-b\n"
    code, out, err = await _steplog(settings, "namespaces", "list")
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["default", "team-b"]
    code, out, err = await _steplog(
        settings,
        "keys",
        "create",
        "--namespace",
        "team-b",
        "--role",
        "operator",
        "--expires",
        "30d",
    )
    assert code == 0, err
    token = out.splitlines()[0]
    assert token.startswith("slk_")
    key_id = token.split("_")[1]
    code, out, err = await _steplog(settings, "keys", "list")
    assert code == 0, err
    assert key_id in out and token.split("_")[2] not in out
    assert "team-b\toperator\tactive" in out
    code, out, err = await _steplog(settings, "keys", "revoke", key_id)
    assert code == 0, err
    code, out, err = await _steplog(settings, "keys", "list", "--namespace", "team-b")
    assert "team-b\toperator\trevoked" in out
    code, _, err = await _steplog(settings, "keys", "revoke", "0" * 16)
    assert code == 1 and "no API key" in err
    code, _, err = await _steplog(settings, "keys", "create", "--role", "reader")
    assert code == 2  # --namespace or --global is required


class CountingStore(AccessStore):
    """The real store, counting the key reads authentication makes."""

    reads = 0

    async def key_secret(self, key_id: str) -> KeySecret | None:
        self.reads += 1
        return await super().key_secret(key_id)


@contextlib.asynccontextmanager
async def following(access: Access, eventually: Eventually) -> AsyncIterator[None]:
    """``access`` listening for revocations (as the API role runs it)."""
    stop = asyncio.Event()
    task = asyncio.create_task(access.follow_revocations(stop))

    async def live() -> bool:
        changes = access._changes
        return changes is not None and changes.live

    try:
        await eventually(live)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_key_is_read_once_while_revocations_are_heard_and_a_revocation_anywhere_ends_it(
    pool: asyncpg.Pool, eventually: Eventually
) -> None:
    store = CountingStore(pool)
    api = Access(store, cache_s=60)
    other = Access.over(pool)  # another process: `steplog keys revoke`, another API
    record, token = await other.create_key(namespace="default", role="operator", actor=ACTOR)
    for _ in range(5):  # not listening: each request reads its key
        await api.authenticate(token)
    assert store.reads == 5
    async with following(api, eventually):
        for _ in range(20):
            assert (await api.authenticate(token)).key_id == record.key_id
        assert store.reads == 6
        await other.revoke_key(record.key_id, None, ACTOR)

        async def refused() -> bool:
            try:
                await api.authenticate(token)
            except Unauthenticated as exc:
                return "revoked" in str(exc)
            return False

        await eventually(refused, timeout_s=2)
    with pytest.raises(Unauthenticated, match="revoked"):
        await api.authenticate(token)


async def test_a_key_revoked_through_the_same_process_is_refused_at_once(
    pool: asyncpg.Pool, eventually: Eventually
) -> None:
    api = Access(CountingStore(pool), cache_s=60)
    record, token = await api.create_key(namespace="default", role="reader", actor=ACTOR)
    async with following(api, eventually):
        await api.authenticate(token)
        await api.revoke_key(record.key_id, None, ACTOR)
        with pytest.raises(Unauthenticated, match="revoked"):
            await api.authenticate(token)


async def test_a_remembered_key_expires_on_time_and_unknown_ids_are_not_remembered(
    pool: asyncpg.Pool, eventually: Eventually
) -> None:
    store = CountingStore(pool)
    api = Access(store, cache_s=60)
    expires = await pool.fetchval("SELECT now() + interval '1.5 seconds'")
    _, token = await api.create_key(
        namespace="default", role="reader", expires_at=expires, actor=ACTOR
    )
    async with following(api, eventually):
        await api.authenticate(token)
        reads = store.reads
        await asyncio.sleep(1.7)
        with pytest.raises(Unauthenticated, match="expired"):
            await api.authenticate(token)
        assert store.reads == reads  # by the clock read with it, moved on
        unknown = "slk_" + "0" * 16 + "_" + "0" * 64
        for _ in range(3):
            with pytest.raises(Unauthenticated, match="unknown"):
                await api.authenticate(unknown)
        assert store.reads == reads + 3
        assert len(api._keys) == 1


async def test_with_its_listener_cut_a_process_reads_every_key_until_it_listens_again(
    pool: asyncpg.Pool, eventually: Eventually
) -> None:
    store = CountingStore(pool)
    api = Access(store, cache_s=60)
    other = Access.over(pool)
    record, token = await other.create_key(namespace="default", role="reader", actor=ACTOR)
    async with following(api, eventually):
        await api.authenticate(token)
        reads = store.reads
        await api.authenticate(token)
        assert store.reads == reads
        # The listening connection dies: what it would have heard is unknown.
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%steplog_keys%' AND pid <> pg_backend_pid()"
        )
        assert killed == 1

        async def reading_again() -> bool:
            before = store.reads
            await api.authenticate(token)
            return store.reads == before + 1

        # As soon as the connection's end reaches the client, not at the next poll.
        await eventually(reading_again, timeout_s=0.5)
        await other.revoke_key(record.key_id, None, ACTOR)  # maybe unheard: read anyway
        with pytest.raises(Unauthenticated, match="revoked"):
            await api.authenticate(token)

        async def listening_again() -> bool:
            changes: Any = api._changes
            return changes is not None and changes.live

        await eventually(listening_again, timeout_s=5)
