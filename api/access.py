"""Access routes, for admins (api/auth.py checks the role):

POST /v1/namespaces {"name"}            -> 201 namespace | 200 when it exists (global admins)
GET  /v1/namespaces                     -> {"namespaces"}: all (global admin) or its own
POST /v1/keys {"role", "name", "namespace", "global_key", "expires_at"}
                                        -> 201 {"key": the whole key, shown once, "info"}
GET  /v1/keys                           -> {"keys"}: of the caller's namespace, or all for
                                           a global admin; never a secret nor its hash
POST /v1/keys/{key_id}/revoke           -> 200 the revoked key (404 key_not_found)
GET  /v1/audit?limit=&cursor=           -> {"entries", "next_cursor"}, newest first: the
                                           caller's namespace, or all for a global admin

Every write here is audited in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from api.access_schemas import (
    AuditList,
    AuditOut,
    AuditQuery,
    CreatedKey,
    CreateKey,
    CreateNamespace,
    KeyList,
    KeyOut,
    NamespaceList,
    NamespaceOut,
)
from api.auth import actor_of
from api.identity import Identity, identity_of
from api.keys import ACCESS, CONFIG
from api.responses import json_response
from api.schemas import decode_body, decode_cursor, decode_query, encode_cursor
from engine.access import AuditRecord, KeyRecord, NamespaceRecord
from engine.errors import Forbidden, KeyNotFound
from projections.history import rfc3339

routes = web.RouteTableDef()
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_decode_details = msgspec.json.Decoder(dict[str, object])
# The audit cursor: the id of the last entry returned (a PostgreSQL bigint).
AuditCursor = Annotated[int, Meta(ge=1, le=2**63 - 1)]


def _who(request: web.Request) -> Identity:
    return identity_of(request, request.app[CONFIG].namespace)


def _scope(who: Identity) -> str | None:
    """What an admin sees: everything for a global admin, else its namespace."""
    return None if who.global_admin or who.key_id is None else who.namespace


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def _namespace_out(n: NamespaceRecord) -> NamespaceOut:
    return NamespaceOut(name=n.name, created_at=rfc3339(n.created_at))


def _key_out(k: KeyRecord) -> KeyOut:
    return KeyOut(
        key_id=k.key_id,
        prefix=k.prefix,
        name=k.name,
        namespace=k.namespace,
        role=k.role,
        created_at=rfc3339(k.created_at),
        expires_at=_time(k.expires_at),
        revoked_at=_time(k.revoked_at),
        last_used_at=_time(k.last_used_at),
    )


def _audit_out(a: AuditRecord) -> AuditOut:
    return AuditOut(
        id=a.id,
        at=rfc3339(a.at),
        key_id=a.key_id,
        namespace=a.namespace,
        action=a.action,
        target=a.target,
        remote=a.remote,
        details=dict(_decode_details.decode(a.details)),
    )


@routes.post("/v1/namespaces")
async def create_namespace(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), CreateNamespace)
    if _scope(_who(request)) is not None:
        raise Forbidden("only a global admin key creates namespaces")
    record, created = await request.app[ACCESS].create_namespace(req.name, actor_of(request))
    return json_response(_namespace_out(record), status=201 if created else 200)


@routes.get("/v1/namespaces")
async def list_namespaces(request: web.Request) -> web.Response:
    scope = _scope(_who(request))
    records = await request.app[ACCESS].list_namespaces()
    return json_response(
        NamespaceList(
            namespaces=[_namespace_out(n) for n in records if scope is None or n.name == scope]
        )
    )


@routes.post("/v1/keys")
async def create_key(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), CreateKey)
    who = _who(request)
    scope = _scope(who)
    if req.global_key and req.namespace is not None:
        raise Forbidden("a global key has no namespace: give one of namespace, global_key")
    namespace = None if req.global_key else (req.namespace or who.namespace)
    if scope is not None and namespace != scope:
        raise Forbidden(f"this key creates keys of namespace {scope!r} only")
    record, token = await request.app[ACCESS].create_key(
        namespace=namespace,
        role=req.role,
        name=req.name,
        expires_at=req.expires_at,
        actor=actor_of(request),
    )
    return json_response(
        CreatedKey(key=token, info=_key_out(record)),
        status=201,
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/v1/keys")
async def list_keys(request: web.Request) -> web.Response:
    records = await request.app[ACCESS].list_keys(_scope(_who(request)))
    return json_response(KeyList(keys=[_key_out(k) for k in records]))


@routes.post("/v1/keys/{key_id}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    if not _KEY_ID.fullmatch(key_id):
        raise KeyNotFound(f"no API key {key_id[:40]!r}")
    record = await request.app[ACCESS].revoke_key(key_id, _scope(_who(request)), actor_of(request))
    return json_response(_key_out(record))


@routes.get("/v1/audit")
async def list_audit(request: web.Request) -> web.Response:
    query = decode_query(request.query, AuditQuery)
    before = None
    if query.cursor is not None:
        before = decode_cursor(query.cursor, AuditCursor)
    rows = await request.app[ACCESS].audit_trail(_scope(_who(request)), before, query.limit + 1)
    page = rows[: query.limit]
    return json_response(
        AuditList(
            entries=[_audit_out(a) for a in page],
            next_cursor=encode_cursor(page[-1].id) if len(rows) > query.limit else None,
        )
    )
