"""The command side of access: API keys, namespaces and the audit trail.

A key is ``slk_<key_id>_<secret>``: ``key_id`` (16 hex digits) is public and indexes the
row; ``secret`` is 32 random bytes (64 hex digits), shown once at creation. Only the
SHA-256 of the secret is stored. A slow hash (bcrypt, argon2) protects low-entropy
passwords against guessing after a leak of the table; a 256-bit random secret cannot be
guessed whatever the hash costs, so one SHA-256 per request is enough and keeps
authentication in microseconds. The comparison is constant-time (hmac.compare_digest),
and an unknown key id costs the same hash and comparison as a wrong secret.

``last_used_at`` is written at most once per TOUCH_EVERY_S per key and process (an
in-process memory of the last write), never once per request.

A key read is remembered for ``cache_s`` seconds (STEPLOG_KEY_CACHE_S), only while
`follow_revocations` runs and listens: a revocation committed by any process (the API,
`steplog keys revoke`) announces the key, and every listening process forgets it at
once; a process that is not listening (the listener's connection lost, or none
started) reads every key from PostgreSQL. So a revoked key is refused as soon as the
announcement arrives, milliseconds after the commit, never ``cache_s`` later. An
expiry is checked against PostgreSQL's clock as read with the key, moved on by the
time since. The cache holds found keys only (an unknown key id is read every time,
so guessing ids fills nothing).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any

import asyncpg
import msgspec

from engine.adapters.access import (
    AccessStore,
    AuditEntry,
    AuditRecord,
    KeyChanges,
    KeyRecord,
    KeySecret,
    NamespaceRecord,
)
from engine.errors import (
    InvalidRequest,
    KeyNotFound,
    NamespaceNotFound,
    Unauthenticated,
    Unavailable,
)

KEY_PREFIX = "slk_"
ROLES = ("reader", "operator", "admin")
log = logging.getLogger(__name__)

TOUCH_EVERY_S = 60.0
KEY_CACHE_SIZE = 10_000  # keys remembered at most (the oldest forgotten first)
NAMESPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY = re.compile(r"slk_([0-9a-f]{16})_([0-9a-f]{64})")
_DUMMY_HASH = hashlib.sha256(b"steplog: no such key").digest()

__all__ = [
    "Access",
    "Actor",
    "AuditRecord",
    "KeyRecord",
    "NamespaceRecord",
    "Principal",
    "redact",
]


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who acts, for the audit trail: the key (None without authentication), the
    namespace it acts in, and the client's address."""

    key_id: str | None
    namespace: str | None
    remote: str | None


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated key: its namespace (None for a global admin key) and role."""

    key_id: str
    namespace: str | None
    role: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_SECRET_LIKE = re.compile(r"slk_[0-9a-f]{16}_[0-9A-Za-z]+")


def redact(text: str) -> str:
    """``text`` with the secret part of every key-looking token replaced (for logs)."""
    return _SECRET_LIKE.sub(lambda m: m.group(0)[:21] + "<redacted>", text)


class Access:
    """Keys, namespaces and the audit trail; every administrative write is audited in
    its own transaction."""

    def __init__(self, store: AccessStore, *, cache_s: float = 0.0) -> None:
        self.store = store
        self.cache_s = cache_s
        self._touched: dict[str, float] = {}
        # key_id -> (the key as read, time.monotonic() when read); see the module doc.
        self._keys: dict[str, tuple[KeySecret, float]] = {}
        self._generation = 0  # moves at every forgetting: a read older than it is stale
        self._changes: KeyChanges | None = None

    @classmethod
    def over(cls, pool: asyncpg.Pool, *, cache_s: float = 0.0) -> Access:
        return cls(AccessStore(pool), cache_s=cache_s)

    async def follow_revocations(self, stop: asyncio.Event) -> None:
        """Listen for revoked keys until ``stop`` is set, remembering keys read
        meanwhile for ``cache_s`` seconds (the API role runs this)."""
        self._changes = self.store.key_changes(self._forget, self._forget_all)
        try:
            await self._changes.run(stop)
        finally:
            self._changes = None
            self._forget_all()

    def _forget(self, key_id: str) -> None:
        self._generation += 1
        self._keys.pop(key_id, None)

    def _forget_all(self) -> None:
        self._generation += 1
        self._keys.clear()

    def _remembered(self, key_id: str) -> tuple[KeySecret, float] | None:
        known = self._keys.get(key_id)
        if known is None or self._changes is None or not self._changes.live:
            return None
        if time.monotonic() - known[1] >= self.cache_s:
            del self._keys[key_id]
            return None
        return known

    async def _read_key(self, key_id: str) -> tuple[KeySecret, float] | None:
        generation = self._generation
        row = await self.store.key_secret(key_id)
        if row is None:
            return None
        read = (row, time.monotonic())
        # Not when a key was forgotten during the read (it may be this one, revoked
        # after the row was read), nor while no revocation would be heard of.
        if (
            self.cache_s > 0
            and generation == self._generation
            and self._changes is not None
            and self._changes.live
        ):
            if len(self._keys) >= KEY_CACHE_SIZE:
                del self._keys[next(iter(self._keys))]
            self._keys[key_id] = read
        return read

    # -- authentication -------------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """The key's principal; `Unauthenticated` for a malformed, unknown, revoked or
        expired key (the first two alike, and after the same work)."""
        match = _KEY.fullmatch(token)
        if match is None:
            raise Unauthenticated("the API key is malformed (expected slk_<id>_<secret>)")
        key_id, secret = match.groups()
        read = self._remembered(key_id) or await self._read_key(key_id)
        expected = read[0].secret_hash if read is not None else _DUMMY_HASH
        if not hmac.compare_digest(_hash(secret), expected) or read is None:
            raise Unauthenticated("unknown API key")
        row, read_at = read
        if row.revoked_at is not None:
            raise Unauthenticated("the API key is revoked")
        # PostgreSQL's clock as read with the key, moved on by the time since.
        now = row.now + dt.timedelta(seconds=time.monotonic() - read_at)
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthenticated("the API key has expired")
        await self._touch(key_id, now)
        return Principal(key_id=key_id, namespace=row.namespace, role=row.role)

    async def _touch(self, key_id: str, now: dt.datetime) -> None:
        clock = time.monotonic()
        last = self._touched.get(key_id)
        if last is not None and clock - last < TOUCH_EVERY_S:
            return
        self._touched[key_id] = clock
        try:
            await self.store.touch_key(key_id, now)
        except Unavailable as exc:
            # last_used_at is a hint for operators: a read-only or busy PostgreSQL must
            # not refuse the request it was recorded for (tried again TOUCH_EVERY_S later).
            log.warning("key %s: last use not recorded: %r", key_id, exc)

    # -- namespaces -----------------------------------------------------------------------

    async def create_namespace(self, name: str, actor: Actor) -> tuple[NamespaceRecord, bool]:
        if not NAMESPACE_NAME.fullmatch(name):
            raise InvalidRequest(
                "a namespace name is 1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
            )
        return await self.store.create_namespace(
            name, _entry(actor, "namespace.create", name, namespace=name)
        )

    async def list_namespaces(self) -> list[NamespaceRecord]:
        return await self.store.list_namespaces()

    async def require_namespace(self, name: str) -> None:
        if not await self.store.namespace_exists(name):
            raise NamespaceNotFound(f"no namespace {name!r}")

    # -- keys -----------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        namespace: str | None,
        role: str,
        name: str = "",
        expires_at: dt.datetime | None = None,
        actor: Actor,
    ) -> tuple[KeyRecord, str]:
        """A new key of ``namespace`` (global when None: admins only) and its whole
        token, which is never shown again."""
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
        if namespace is None and role != "admin":
            raise InvalidRequest("only an admin key may be global (without a namespace)")
        if namespace is not None:
            await self.require_namespace(namespace)
        key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
        token = f"{KEY_PREFIX}{key_id}_{secret}"
        record = await self.store.create_key(
            key_id=key_id,
            prefix=token[:25],
            secret_hash=_hash(secret),
            name=name,
            namespace=namespace,
            role=role,
            expires_at=expires_at,
            audit=_entry(
                actor,
                "key.create",
                key_id,
                {"namespace": namespace, "role": role, "name": name},
                namespace=namespace or actor.namespace,
            ),
        )
        return record, token

    async def list_keys(self, namespace: str | None) -> list[KeyRecord]:
        return await self.store.list_keys(namespace)

    async def revoke_key(self, key_id: str, namespace: str | None, actor: Actor) -> KeyRecord:
        """Revoke a key (of ``namespace`` when given); `KeyNotFound` otherwise."""
        record = await self.store.revoke_key(key_id, namespace, _entry(actor, "key.revoke", key_id))
        if record is None:
            raise KeyNotFound(f"no API key {key_id!r}")
        self._forget(key_id)  # at once here; the announcement tells the other processes
        return record

    # -- the audit trail ------------------------------------------------------------------

    async def record(
        self, actor: Actor, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        """Audit an action committed elsewhere (e.g. a stop), right after its commit."""
        await self.store.audit(_entry(actor, action, target, details or {}))

    async def audit_trail(
        self, namespace: str | None, before: int | None, limit: int
    ) -> list[AuditRecord]:
        return await self.store.list_audit(namespace, before, limit)


def _entry(
    actor: Actor,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
    *,
    namespace: str | None = None,
) -> AuditEntry:
    """The audit row of ``actor``'s action, in ``namespace`` (the actor's by default)."""
    return AuditEntry(
        key_id=actor.key_id,
        namespace=namespace or actor.namespace,
        action=action,
        target=target,
        remote=actor.remote,
        details=details or {},
    )
