"""Who is calling: the identity the authentication middleware attaches to a request,
and what every later step (rate limits, handlers, the audit trail) reads of it.

Without authentication (a development server on loopback), every request is the
anonymous admin of the configured namespace.
"""

from __future__ import annotations

import enum

import msgspec
from aiohttp import web


class Role(enum.IntEnum):
    """What a key may do; each role may do what the roles below it may."""

    READER = 1  # GET routes
    OPERATOR = 2  # also start, stop, register
    ADMIN = 3  # also keys, namespaces, limits, the audit trail


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """``key_id``: the API key's public id (None when authentication is off).
    ``namespace``: the namespace every route of the request works in.
    ``role``: what the key may do. ``global_admin``: an admin key not bound to one
    namespace (it names the namespace it works in per request)."""

    key_id: str | None
    namespace: str
    role: Role
    global_admin: bool = False


IDENTITY = web.RequestKey("steplog_identity", Identity)


def identity_of(request: web.Request, default_namespace: str) -> Identity:
    """The request's identity; the anonymous admin of ``default_namespace`` when no
    authentication step set one."""
    found: Identity | None = request.get(IDENTITY)
    if found is not None:
        return found
    return Identity(key_id=None, namespace=default_namespace, role=Role.ADMIN)
