"""Authentication and roles: who is calling, and may they call this route.

Every route needs ``Authorization: Bearer slk_<id>_<secret>`` except GET /health/live and
GET /health/ready. The key's namespace is the namespace every route of the request works
in; a global admin key (no namespace) works in the namespace named by the
``Steplog-Namespace`` header (ApiConfig.namespace when absent). A key bound to a
namespace may not name another one (403).

Roles (api.identity.Role): reader for GET routes (and POST /v1/workflows:validate, which
writes nothing); operator also for the other writes (register, start, stop); admin also
for /v1/keys, /v1/namespaces, /v1/audit and /v1/webhooks (a subscription makes the
server call a URL of the caller's choosing, and its deliveries show what receivers
answered: so all of /v1/webhooks, reads included, is for admins).

Refusals: no key, a malformed, unknown, revoked or expired key -> 401 ``unauthenticated``
with ``WWW-Authenticate: Bearer``; a role or namespace that does not allow the route ->
403 ``forbidden``. The key is never logged nor echoed in an error.

/metrics: with ApiConfig.metrics_token set it needs ``Authorization: Bearer <token>``
(401 otherwise); without one it is served to loopback clients only (403 for others).

With ApiConfig.auth off (allowed only while the API listens on loopback; steplog/ checks
it), every request is the anonymous admin of ApiConfig.namespace.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from api.identity import IDENTITY, Identity, Role, identity_of
from api.keys import ACCESS, CONFIG
from api.problems import Handler, problem
from engine.access import Actor
from engine.errors import Forbidden, Unauthenticated

PUBLIC_PATHS = frozenset({"/health/live", "/health/ready"})
METRICS_PATH = "/metrics"
ADMIN_PREFIXES = ("/v1/keys", "/v1/namespaces", "/v1/audit", "/v1/webhooks")
NAMESPACE_HEADER = "Steplog-Namespace"
# Writes nothing though it is a POST.
READER_POSTS = frozenset({"/v1/workflows:validate"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="steplog"'}


def required_role(method: str, path: str) -> Role:
    """The least role that may call ``method path``."""
    if any(path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES):
        return Role.ADMIN
    if method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and path in READER_POSTS):
        return Role.READER
    return Role.OPERATOR


def bearer_token(request: web.Request) -> str:
    """The token of ``Authorization: Bearer <token>``; `Unauthenticated` without one."""
    header = request.headers.get("Authorization")
    if header is None:
        raise Unauthenticated("this route needs an API key: Authorization: Bearer <key>")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header must be: Bearer <key>")
    return token


def namespace_of(request: web.Request) -> str:
    """The namespace the request works in."""
    return identity_of(request, request.app[CONFIG].namespace).namespace


def actor_of(request: web.Request) -> Actor:
    """Who acts, for the audit trail."""
    who = identity_of(request, request.app[CONFIG].namespace)
    return Actor(key_id=who.key_id, namespace=who.namespace, remote=request.remote)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _check_metrics(request: web.Request) -> None:
    token = request.app[CONFIG].metrics_token
    if token is None:
        if not _is_loopback(request.remote):
            raise Forbidden("/metrics is served to loopback clients only (set a metrics token)")
        return
    given = bearer_token(request)
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthenticated("wrong metrics token")


async def _identify(request: web.Request) -> Identity:
    config = request.app[CONFIG]
    named = request.headers.get(NAMESPACE_HEADER)
    if not config.auth:
        return Identity(key_id=None, namespace=config.namespace, role=Role.ADMIN)
    principal = await request.app[ACCESS].authenticate(bearer_token(request))
    role = Role[principal.role.upper()]
    if principal.namespace is None:
        namespace = config.namespace
        if named is not None and named != namespace:
            await request.app[ACCESS].require_namespace(named)
            namespace = named
        return Identity(key_id=principal.key_id, namespace=namespace, role=role, global_admin=True)
    if named is not None and named != principal.namespace:
        raise Forbidden(f"this key belongs to namespace {principal.namespace!r}")
    return Identity(key_id=principal.key_id, namespace=principal.namespace, role=role)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Set request[IDENTITY] and check the role, before any body is read."""
    if request.path in PUBLIC_PATHS or request.method == "OPTIONS":
        return await handler(request)
    try:
        if request.path == METRICS_PATH:
            _check_metrics(request)
            return await handler(request)
        identity = await _identify(request)
    except Unauthenticated as exc:
        return problem(request, 401, exc.code, exc.message, headers=dict(_CHALLENGE))
    request[IDENTITY] = identity
    needed = required_role(request.method, request.path)
    if identity.role < needed:
        raise Forbidden(f"this route needs the {needed.name.lower()} role")
    return await handler(request)
