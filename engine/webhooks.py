"""Webhooks: the command side of subscriptions (the API and the CLI talk to `Webhooks`),
and what a delivery is made of (filter, payload, delivery id, Standard Webhooks
signature), shared with the webhooks role (engine/loops/webhooks.py). docs/webhooks.md
is the user's side of it.

- A subscription belongs to a namespace: a URL (http or https; checked against the
  outbound guard when it is a literal address), a secret (``whsec_`` + base64 of 24 to 64
  bytes; generated, 32 bytes, when not given, and shown only in the create response), a
  filter and an enabled flag.
- Filter: ``event_types`` (history event types, e.g. TaskStateEntered) and ``statuses``
  (execution status changes: RUNNING for ExecutionStarted, SUCCEEDED, FAILED, TIMED_OUT,
  ABORTED for the terminal events); an event matches either list; both empty: every
  event. ``workflows``, when not empty, limits both to those workflows.
- The delivery id of an event for a subscription is ``msg_`` + a UUIDv5 of the
  subscription id, the execution id and the seq: stable across retries, replays, crashes
  and re-reads, and different per subscription.
- Signature (Standard Webhooks): ``webhook-signature: v1,<base64 HMAC-SHA256>`` of
  ``f"{id}.{timestamp}.{body}"`` keyed with the bytes the secret's base64 part decodes to.
- Rotation: a new secret (given, or generated as at create) replaces the current one,
  which keeps signing alongside for ``SubscriptionPolicy.secret_overlap_s``: meanwhile
  the header carries both signatures, space-delimited, the new one first. Rotating
  again during an overlap drops the older previous secret.
- A namespace holds at most ``SubscriptionPolicy.max_per_namespace`` subscriptions (0:
  no cap); a create beyond is refused (409 ``webhook_limit_exceeded``), race-free.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import typing
import uuid
from collections.abc import Sequence
from uuid import UUID

import asyncpg
import msgspec

from engine.adapters.outbound import OutboundError, OutboundPolicy, check_url
from engine.adapters.webhooks_store import (
    DeliveryRecord,
    LoggedEvent,
    Subscription,
    WebhookStore,
)
from engine.core import events as ev
from engine.core.timestamps import iso_millis
from engine.errors import InvalidRequest, NotFound, SteplogError

__all__ = [
    "EVENT_TYPES",
    "STATUSES",
    "DeliveryRecord",
    "Subscription",
    "SubscriptionPolicy",
    "WebhookLimitExceeded",
    "WebhookNotFound",
    "Webhooks",
]

SECRET_PREFIX = "whsec_"
STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
STATUS_OF_EVENT = {
    "ExecutionStarted": "RUNNING",
    "ExecutionSucceeded": "SUCCEEDED",
    "ExecutionFailed": "FAILED",
    "ExecutionTimedOut": "TIMED_OUT",
    "ExecutionAborted": "ABORTED",
}
EVENT_TYPES: frozenset[str] = frozenset(t.__struct_config__.tag for t in typing.get_args(ev.Event))
MAX_URL_LENGTH = 2048
DELIVERY_STATES = ("pending", "delivered", "dead")
# Bounds of SubscriptionPolicy: a year of overlap; a cap PostgreSQL's int holds easily.
MAX_SECRET_OVERLAP_S = 366 * 86400
MAX_SUBSCRIPTIONS_CAP = 1_000_000
_DELIVERY_NAMESPACE = uuid.UUID("5b0c1f5e-7d1e-4c55-9a3e-776562686f6b")


class DeliveryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How the webhooks role sends (steplog/settings.py STEPLOG_WEBHOOK_*): retries back
    off exponentially from ``retry_base_s`` (doubling, at most ``retry_max_s``, each delay
    jittered down by up to half) until ``retry_horizon_s`` after the first attempt, then
    the delivery is dead-lettered; a subscription whose deliveries have failed for longer
    than ``pause_after_s`` without a success in between is paused."""

    retry_base_s: float = 1.0
    retry_max_s: float = 600.0
    retry_horizon_s: float = 3 * 86400.0
    pause_after_s: float = 5 * 86400.0
    concurrency: int = 32
    poll_s: float = 0.5
    batch_size: int = 500
    excerpt_bytes: int = 1024

    def __post_init__(self) -> None:
        if min(self.retry_base_s, self.retry_max_s, self.poll_s) <= 0:
            raise ValueError("webhook retry and poll times must be positive")
        if self.retry_horizon_s < 0 or self.pause_after_s < 0:
            raise ValueError("webhook retry horizon and pause time must not be negative")
        if self.concurrency < 1 or self.batch_size < 1 or self.excerpt_bytes < 0:
            raise ValueError("webhook concurrency and batch size must be positive")

    def backoff_s(self, attempt: int, jitter: float) -> float:
        """The pause after failed attempt number ``attempt`` (1, 2, ...); ``jitter`` in
        [0, 1) takes up to half of it away."""
        delay = min(self.retry_max_s, self.retry_base_s * 2.0 ** min(attempt - 1, 60))
        return float(delay * (1 - jitter / 2))


class SubscriptionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What subscriptions are held to (steplog/settings.py STEPLOG_WEBHOOK_*): a rotated
    secret keeps signing alongside the new one for ``secret_overlap_s``; a namespace has
    at most ``max_per_namespace`` subscriptions (0: no cap)."""

    secret_overlap_s: float = 86400.0
    max_per_namespace: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.secret_overlap_s <= MAX_SECRET_OVERLAP_S:
            raise ValueError(f"webhook secret overlap must be in [0, {MAX_SECRET_OVERLAP_S}] s")
        if not 0 <= self.max_per_namespace <= MAX_SUBSCRIPTIONS_CAP:
            raise ValueError(f"webhook subscription cap must be in [0, {MAX_SUBSCRIPTIONS_CAP}]")


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"


class InvalidWebhook(InvalidRequest):
    code = "invalid_webhook"
    status = 422


class WebhookLimitExceeded(SteplogError):
    """A create in a namespace that has as many subscriptions as the cap allows."""

    code = "webhook_limit_exceeded"
    status = 409


# -- what a delivery is made of --------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (ValueError when it is not one)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ must be base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("the secret must be 24 to 64 bytes (base64 after whsec_)")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signatures(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value signed by each of ``secrets`` (the current
    one first), space-delimited as Standard Webhooks allows; a repeated secret signs once."""
    return " ".join(sign(s, message_id, timestamp, body) for s in dict.fromkeys(secrets))


def delivery_id(webhook_id: UUID, execution_id: UUID, seq: int) -> str:
    return "msg_" + uuid.uuid5(_DELIVERY_NAMESPACE, f"{webhook_id}:{execution_id}:{seq}").hex


def matches(sub: Subscription, event: LoggedEvent) -> bool:
    """Whether ``event`` is one ``sub`` delivers (see the module doc)."""
    if event.namespace != sub.namespace:
        return False
    if sub.workflows and event.workflow not in sub.workflows:
        return False
    if not sub.event_types and not sub.statuses:
        return True
    return event.type in sub.event_types or STATUS_OF_EVENT.get(event.type) in sub.statuses


class PayloadData(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str
    workflow: str | None
    execution_id: str
    execution_name: str | None
    seq: int
    event_type: str
    # The execution's status after this event.
    status: str
    # The history event as recorded (the same JSON as GET .../history shows).
    event: msgspec.Raw


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    timestamp: str
    data: PayloadData


def payload(event: LoggedEvent) -> bytes:
    """The JSON body delivered for ``event`` (docs/webhooks.md)."""
    status = STATUS_OF_EVENT.get(event.type)
    body = Payload(
        type="execution.status_changed" if status else "execution.event",
        timestamp=iso_millis(event.recorded_at),
        data=PayloadData(
            namespace=event.namespace or "",
            workflow=event.workflow,
            execution_id=str(event.execution_id),
            execution_name=event.execution_name,
            seq=event.seq,
            event_type=event.type,
            status=status or "RUNNING",
            event=msgspec.Raw(event.data.encode()),
        ),
    )
    return msgspec.json.encode(body)


# -- the command side --------------------------------------------------------------------


def _checked_secret(secret: str | None) -> str:
    """``secret``, or a new one when None (InvalidWebhook when it is not a secret)."""
    if secret is None:
        return new_secret()
    try:
        secret_key(secret)
    except ValueError as exc:
        raise InvalidWebhook(f"secret: {exc}") from None
    return secret


def _unique(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(dict.fromkeys(values))


class Webhooks:
    """Subscriptions of a namespace, their deliveries and replays."""

    def __init__(
        self,
        store: WebhookStore,
        policy: OutboundPolicy | None = None,
        subscriptions: SubscriptionPolicy | None = None,
    ) -> None:
        self.store = store
        self.policy = policy or OutboundPolicy()
        self.subscriptions = subscriptions or SubscriptionPolicy()

    @classmethod
    def over(
        cls,
        pool: asyncpg.Pool,
        policy: OutboundPolicy | None = None,
        subscriptions: SubscriptionPolicy | None = None,
    ) -> Webhooks:
        return cls(WebhookStore(pool), policy, subscriptions)

    def _check(
        self,
        url: str | None,
        event_types: Sequence[str] | None,
        statuses: Sequence[str] | None,
    ) -> None:
        if url is not None:
            if len(url) > MAX_URL_LENGTH:
                raise InvalidWebhook(f"url: at most {MAX_URL_LENGTH} characters")
            try:
                check_url(url, self.policy)
            except OutboundError as exc:
                raise InvalidWebhook(f"url: {exc.message}") from None
        unknown = sorted(set(event_types or ()) - EVENT_TYPES)
        if unknown:
            raise InvalidWebhook(f"event_types: unknown event types {unknown}")
        unknown = sorted(set(statuses or ()) - set(STATUSES))
        if unknown:
            raise InvalidWebhook(f"statuses: unknown {unknown}; known: {list(STATUSES)}")

    async def create(
        self,
        namespace: str,
        *,
        url: str,
        secret: str | None = None,
        description: str = "",
        event_types: Sequence[str] = (),
        statuses: Sequence[str] = (),
        workflows: Sequence[str] = (),
        enabled: bool = True,
    ) -> Subscription:
        """A new subscription; it delivers what is committed from now on.
        WebhookLimitExceeded when the namespace has as many as the cap allows."""
        self._check(url, event_types, statuses)
        secret = _checked_secret(secret)
        cap = self.subscriptions.max_per_namespace
        sub = await self.store.create(
            webhook_id=uuid.uuid4(),
            namespace=namespace,
            url=url,
            secret=secret,
            description=description,
            event_types=_unique(event_types) or (),
            statuses=_unique(statuses) or (),
            workflows=_unique(workflows) or (),
            enabled=enabled,
            paused_reason=None if enabled else "created paused",
            max_per_namespace=cap,
        )
        if sub is None:
            raise WebhookLimitExceeded(
                f"namespace {namespace!r} has {cap} webhook subscriptions, the most "
                f"allowed (STEPLOG_WEBHOOK_MAX_PER_NAMESPACE={cap}); delete one first"
            )
        return sub

    async def rotate_secret(
        self, namespace: str, webhook_id: UUID, secret: str | None = None
    ) -> Subscription:
        """Sign with ``secret`` (generated when None) from now on; the secret it replaces
        signs alongside for the overlap (``previous_secret_until`` of the result)."""
        secret = _checked_secret(secret)
        sub = await self.store.rotate_secret(
            namespace, webhook_id, secret, self.subscriptions.secret_overlap_s
        )
        if sub is None:
            raise WebhookNotFound(f"no webhook {webhook_id}")
        return sub

    async def list_webhooks(self, namespace: str | None) -> list[Subscription]:
        return await self.store.list_webhooks(namespace)

    async def get(self, namespace: str, webhook_id: UUID) -> Subscription:
        sub = await self.store.get(namespace, webhook_id)
        if sub is None:
            raise WebhookNotFound(f"no webhook {webhook_id}")
        return sub

    async def update(
        self,
        namespace: str,
        webhook_id: UUID,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        workflows: Sequence[str] | None = None,
        enabled: bool | None = None,
        paused_reason: str | None = None,
    ) -> Subscription:
        """Change what is given; ``enabled=False`` pauses (with ``paused_reason``, else
        "paused by hand"), ``enabled=True`` resumes from where it stopped."""
        self._check(url, event_types, statuses)
        sub = await self.store.update(
            namespace,
            webhook_id,
            url=url,
            description=description,
            event_types=_unique(event_types),
            statuses=_unique(statuses),
            workflows=_unique(workflows),
            enabled=enabled,
            paused_reason=paused_reason or "paused by hand",
        )
        if sub is None:
            raise WebhookNotFound(f"no webhook {webhook_id}")
        return sub

    async def delete(self, namespace: str, webhook_id: UUID) -> None:
        if not await self.store.delete(namespace, webhook_id):
            raise WebhookNotFound(f"no webhook {webhook_id}")

    async def deliveries(
        self, namespace: str, webhook_id: UUID, *, state: str | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        """The newest deliveries (with every attempt), at most ``limit``."""
        await self.get(namespace, webhook_id)
        return await self.store.deliveries(webhook_id, state, limit)

    async def replay(self, namespace: str, webhook_id: UUID, delivery: str) -> DeliveryRecord:
        """Send a delivery again, now, with the same id and body (a dead one too)."""
        await self.get(namespace, webhook_id)
        record = await self.store.replay(webhook_id, delivery)
        if record is None:
            raise DeliveryNotFound(f"no delivery {delivery[:80]!r} of webhook {webhook_id}")
        return record
