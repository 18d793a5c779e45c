"""All SQL of API keys, namespaces and the audit trail (migration 0006).

An administrative write (a key created or revoked, a namespace created) and its audit row
are one transaction: the trail never misses an action that happened, nor records one that
did not. The audit table refuses UPDATE and DELETE itself, like the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import msgspec

from engine.adapters.postgres import listen, translate_errors

# A key revoked is announced here (its key_id) by the revoking transaction, so that
# every process drops what it remembers of the key at the commit (`KeyChanges`).
KEYS_CHANNEL = "steplog_keys"
NOTIFY_KEY = f"SELECT pg_notify('{KEYS_CHANNEL}', $1)"

INSERT_NAMESPACE = """
INSERT INTO namespaces (name) VALUES ($1) ON CONFLICT DO NOTHING
RETURNING name, created_at"""
SELECT_NAMESPACE = "SELECT name, created_at FROM namespaces WHERE name = $1"
LIST_NAMESPACES = "SELECT name, created_at FROM namespaces ORDER BY name"

_KEY_COLUMNS = """key_id, prefix, name, namespace, role, created_at, expires_at, revoked_at,
       last_used_at"""
INSERT_KEY = f"""
INSERT INTO api_keys (key_id, prefix, secret_hash, name, namespace, role, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING {_KEY_COLUMNS}"""
# The one lookup of an authentication: the hash is compared by the caller in constant time.
SELECT_KEY_SECRET = """
SELECT key_id, secret_hash, namespace, role, expires_at, revoked_at, now() AS now
FROM api_keys WHERE key_id = $1"""
LIST_KEYS = f"""
SELECT {_KEY_COLUMNS} FROM api_keys
WHERE ($1::text IS NULL OR namespace = $1) ORDER BY created_at, key_id"""
REVOKE_KEY = f"""
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE key_id = $1 AND ($2::text IS NULL OR namespace = $2)
RETURNING {_KEY_COLUMNS}"""
TOUCH_KEY = """
UPDATE api_keys SET last_used_at = $2 WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)"""

INSERT_AUDIT = """
INSERT INTO audit_log (key_id, namespace, action, target, remote, details)
VALUES ($1, $2, $3, $4, $5, $6::json)"""
LIST_AUDIT = """
SELECT id, at, key_id, namespace, action, target, remote, details::text AS details
FROM audit_log
WHERE ($1::text IS NULL OR namespace = $1) AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3"""


class NamespaceRecord(msgspec.Struct, frozen=True):
    name: str
    created_at: dt.datetime


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listed: never its secret nor the secret's hash."""

    key_id: str
    prefix: str
    name: str
    namespace: str | None
    role: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class KeySecret(msgspec.Struct, frozen=True, kw_only=True):
    """What authenticating a key reads; ``now`` is PostgreSQL's clock (the one every
    process shares) for the expiry check."""

    key_id: str
    secret_hash: bytes
    namespace: str | None
    role: str
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    now: dt.datetime


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """Who (key id), what (action, target), when, from where, and the details."""

    key_id: str | None
    namespace: str | None
    action: str
    target: str
    remote: str | None
    details: dict[str, Any] = {}


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: dt.datetime
    key_id: str | None
    namespace: str | None
    action: str
    target: str
    remote: str | None
    details: str  # JSON text


def _key(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(**dict(row))


class AccessStore:
    """Keys, namespaces and the audit trail over a pool it does not own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        with translate_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn

    @staticmethod
    async def _audit(conn: asyncpg.Connection, entry: AuditEntry) -> None:
        await conn.execute(
            INSERT_AUDIT,
            entry.key_id,
            entry.namespace,
            entry.action,
            entry.target,
            entry.remote,
            msgspec.json.encode(entry.details).decode(),
        )

    # -- namespaces -----------------------------------------------------------------------

    async def create_namespace(self, name: str, audit: AuditEntry) -> tuple[NamespaceRecord, bool]:
        """(namespace, created); an existing one is returned unchanged and not audited."""
        async with self._transaction() as conn:
            row = await conn.fetchrow(INSERT_NAMESPACE, name)
            if row is not None:
                await self._audit(conn, audit)
                return NamespaceRecord(row["name"], row["created_at"]), True
            row = await conn.fetchrow(SELECT_NAMESPACE, name)
            assert row is not None  # namespaces are never deleted
            return NamespaceRecord(row["name"], row["created_at"]), False

    async def namespace_exists(self, name: str) -> bool:
        with translate_errors():
            return await self._pool.fetchrow(SELECT_NAMESPACE, name) is not None

    async def list_namespaces(self) -> list[NamespaceRecord]:
        with translate_errors():
            rows = await self._pool.fetch(LIST_NAMESPACES)
        return [NamespaceRecord(r["name"], r["created_at"]) for r in rows]

    # -- keys -----------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        key_id: str,
        prefix: str,
        secret_hash: bytes,
        name: str,
        namespace: str | None,
        role: str,
        expires_at: dt.datetime | None,
        audit: AuditEntry,
    ) -> KeyRecord:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                INSERT_KEY, key_id, prefix, secret_hash, name, namespace, role, expires_at
            )
            await self._audit(conn, audit)
        assert row is not None
        return _key(row)

    def key_changes(self, changed: Callable[[str], None], reset: Callable[[], None]) -> KeyChanges:
        """A listener for revoked keys on this store's pool (see `KeyChanges`)."""
        return KeyChanges(self._pool, changed, reset)

    async def key_secret(self, key_id: str) -> KeySecret | None:
        with translate_errors():
            row = await self._pool.fetchrow(SELECT_KEY_SECRET, key_id)
        return None if row is None else KeySecret(**dict(row))

    async def list_keys(self, namespace: str | None) -> list[KeyRecord]:
        """The keys of ``namespace`` (every key, global ones included, when None)."""
        with translate_errors():
            rows = await self._pool.fetch(LIST_KEYS, namespace)
        return [_key(r) for r in rows]

    async def revoke_key(
        self, key_id: str, namespace: str | None, audit: AuditEntry
    ) -> KeyRecord | None:
        """Revoke the key (of ``namespace`` when given); None when there is no such key
        there. Revoking a revoked key keeps its first revocation time."""
        async with self._transaction() as conn:
            row = await conn.fetchrow(REVOKE_KEY, key_id, namespace)
            if row is not None:
                await self._audit(conn, audit)
                await conn.execute(NOTIFY_KEY, key_id)
        return None if row is None else _key(row)

    async def touch_key(self, key_id: str, at: dt.datetime) -> None:
        with translate_errors():
            await self._pool.execute(TOUCH_KEY, key_id, at)

    # -- the audit trail ------------------------------------------------------------------

    async def audit(self, entry: AuditEntry) -> None:
        """Record an action that was committed elsewhere (a stop)."""
        async with self._transaction() as conn:
            await self._audit(conn, entry)

    async def list_audit(
        self, namespace: str | None, before: int | None, limit: int
    ) -> list[AuditRecord]:
        """Newest first, ids below ``before``; of ``namespace`` (all when None)."""
        with translate_errors():
            rows = await self._pool.fetch(LIST_AUDIT, namespace, before, limit)
        return [AuditRecord(**dict(r)) for r in rows]


class KeyChanges:
    """Listens for keys revoked by any process (LISTEN steplog_keys) on a pooled
    connection of its own while `run` runs: ``changed(key_id)`` at each, ``reset()``
    whenever listening starts or stops (what was announced meanwhile is unknown).
    ``live`` is true only while listening, so a cache of keys built on it is used only
    while it would hear of a revocation."""

    POLL_S = 1.0

    def __init__(
        self, pool: asyncpg.Pool, changed: Callable[[str], None], reset: Callable[[], None]
    ) -> None:
        self._pool = pool
        self._changed = changed
        self._reset = reset
        self.live = False

    def _listening(self) -> None:
        self._reset()
        self.live = True

    def _lost(self) -> None:
        self.live = False
        self._reset()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set; reconnect after a failure (not live meanwhile;
        a connection that dies stops the cache at once, not at the next poll)."""
        await listen(
            self._pool,
            KEYS_CHANNEL,
            self._changed,
            stop,
            poll_s=self.POLL_S,
            what="key revocation listener",
            listening=self._listening,
            lost=self._lost,
        )
