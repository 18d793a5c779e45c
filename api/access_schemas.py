"""Request and response types of the access routes (/v1/keys, /v1/namespaces, /v1/audit);
api/openapi.py publishes them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from api.schemas import Cursor, Limit, Timestamp

NamespaceName = Annotated[
    str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]
KeyName = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00-\x1f]*$")]
KeyRole = Literal["reader", "operator", "admin"]


class CreateNamespace(msgspec.Struct, forbid_unknown_fields=True):
    name: NamespaceName


class NamespaceOut(msgspec.Struct):
    name: str
    created_at: str


class NamespaceList(msgspec.Struct):
    namespaces: list[NamespaceOut]


class CreateKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``namespace``: the key's namespace (the caller's when absent); ``global_key``:
    an admin key of no namespace (global admins only). ``expires_at``: after it, the
    key is refused."""

    role: KeyRole
    name: KeyName = ""
    namespace: NamespaceName | None = None
    global_key: bool = False
    expires_at: Timestamp | None = None


class KeyOut(msgspec.Struct):
    """A key as listed: ``prefix`` identifies it; the secret is never shown again."""

    key_id: str
    prefix: str
    name: str
    namespace: str | None
    role: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class CreatedKey(msgspec.Struct):
    """``key``: the whole key, shown this once only."""

    key: str
    info: KeyOut


class KeyList(msgspec.Struct):
    keys: list[KeyOut]


class AuditQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = 100
    cursor: Cursor | None = None


class AuditOut(msgspec.Struct):
    id: int
    at: str
    key_id: str | None
    namespace: str | None
    action: str
    target: str
    remote: str | None
    details: dict[str, Any]


class AuditList(msgspec.Struct):
    """Newest first."""

    entries: list[AuditOut]
    next_cursor: str | None
