"""Request and response types of the webhook routes (/v1/webhooks); api/openapi.py
publishes them. docs/webhooks.md describes the deliveries themselves."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from api.schemas import Limit, WorkflowName

WebhookUrl = Annotated[
    str, Meta(min_length=1, max_length=2048, pattern=r"^https?://[^\s\x00-\x1f]+$")
]
# whsec_ + base64 of 24-64 bytes (the facade checks the length it decodes to).
WebhookSecret = Annotated[str, Meta(pattern=r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$")]
Description = Annotated[str, Meta(max_length=500, pattern=r"^[^\x00]*$")]
EventTypeName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z]+$")]
ExecutionStatus = Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"]
DeliveryState = Literal["pending", "delivered", "dead"]
EventTypes = Annotated[list[EventTypeName], Meta(max_length=100)]
Statuses = Annotated[list[ExecutionStatus], Meta(max_length=5)]
Workflows = Annotated[list[WorkflowName], Meta(max_length=100)]


class CreateWebhook(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``secret``: generated when absent (returned once). ``event_types`` (history event
    types) and ``statuses`` (execution status changes) filter what is delivered: an event
    matching either is; both empty, every event. ``workflows``: only these (empty: all)."""

    url: WebhookUrl
    secret: WebhookSecret | None = None
    description: Description = ""
    event_types: EventTypes = []
    statuses: Statuses = []
    workflows: Workflows = []
    enabled: bool = True


class UpdateWebhook(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What is given changes. ``enabled``: false pauses, true resumes (from where the
    subscription stopped: nothing committed meanwhile is skipped)."""

    url: WebhookUrl | None = None
    description: Description | None = None
    event_types: EventTypes | None = None
    statuses: Statuses | None = None
    workflows: Workflows | None = None
    enabled: bool | None = None


class RotateSecret(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``secret``: the new signing secret; generated when absent (returned once). The
    secret it replaces keeps signing alongside for STEPLOG_WEBHOOK_SECRET_OVERLAP_S."""

    secret: WebhookSecret | None = None


class WebhookOut(msgspec.Struct):
    """A subscription as listed (never its secret). ``paused_reason``: why it is not
    enabled; ``failing_since``: its first failed attempt since the last success;
    ``previous_secret_until``: after a secret rotation, until when the replaced secret
    signs too (absent when none does)."""

    webhook_id: str
    namespace: str
    url: str
    description: str
    event_types: list[str]
    statuses: list[str]
    workflows: list[str]
    enabled: bool
    paused_reason: str | None
    failing_since: str | None
    created_at: str
    updated_at: str
    previous_secret_until: str | None = None


class CreatedWebhook(msgspec.Struct):
    """``secret``: the signing secret, shown this once only."""

    webhook: WebhookOut
    secret: str


class RotatedSecret(msgspec.Struct):
    """``secret``: the new signing secret, shown this once only. ``webhook``'s
    ``previous_secret_until`` says until when the replaced one signs too."""

    webhook: WebhookOut
    secret: str


class WebhookList(msgspec.Struct):
    webhooks: list[WebhookOut]


class DeliveriesQuery(msgspec.Struct, forbid_unknown_fields=True):
    state: DeliveryState | None = None
    limit: Limit = 50


class AttemptOut(msgspec.Struct):
    """One attempt: ``status_code`` absent when no response came (``error`` says why);
    ``response_excerpt``: the start of the response body."""

    attempt: int
    at: str
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: str


class DeliveryOut(msgspec.Struct):
    """``delivery_id`` is the webhook-id header: the same on every attempt and replay."""

    delivery_id: str
    execution_id: str
    seq: int
    event_type: str
    state: str
    attempts: int
    next_attempt_at: str | None
    created_at: str
    finished_at: str | None
    history: list[AttemptOut]


class DeliveryList(msgspec.Struct):
    """Newest first."""

    deliveries: list[DeliveryOut]
