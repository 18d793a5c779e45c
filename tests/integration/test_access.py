"""Keys, namespaces and the audit trail on a real PostgreSQL (engine/access.py,
engine/adapters/access.py, migration 0006) and through the steplog command."""

from __future__ import annotations

import datetime as dt
import hashlib

import asyncpg
import pytest

from engine.access import Access, Actor, redact
from engine.errors import InvalidRequest, KeyNotFound, NamespaceNotFound, Unauthenticated
from steplog.settings import Settings
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
