"""Webhook routes, for admins of the namespace (api/auth.py checks the role):

POST   /v1/webhooks                          -> 201 {"webhook", "secret": shown once}
GET    /v1/webhooks                          -> {"webhooks"} of the namespace
GET    /v1/webhooks/{webhook_id}             -> the subscription (404 webhook_not_found)
PATCH  /v1/webhooks/{webhook_id}             -> the subscription changed (pause: enabled
                                                false; resume: enabled true)
DELETE /v1/webhooks/{webhook_id}             -> 204; its deliveries go with it
GET    /v1/webhooks/{webhook_id}/deliveries?state=&limit=
                                             -> {"deliveries"} newest first, each with its
                                                attempts
POST   /v1/webhooks/{webhook_id}/rotate-secret  {"secret"?}
                                             -> 200 {"webhook", "secret": the new one,
                                                shown once}; the replaced secret signs
                                                too until webhook.previous_secret_until
POST   /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay
                                             -> 200 the delivery, pending again, due now

A subscription of another namespace is answered like an unknown one (404); a create
beyond the namespace's cap is 409 webhook_limit_exceeded. Every change is audited
(webhook.create, .update, .delete, .rotate_secret, .replay) right after it is stored;
no secret is ever in the trail.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

import msgspec
from aiohttp import web

from api.auth import actor_of, namespace_of
from api.keys import ACCESS, WEBHOOKS
from api.responses import json_response
from api.schemas import decode_body, decode_query
from api.webhook_schemas import (
    AttemptOut,
    CreatedWebhook,
    CreateWebhook,
    DeliveriesQuery,
    DeliveryList,
    DeliveryOut,
    RotatedSecret,
    RotateSecret,
    UpdateWebhook,
    WebhookList,
    WebhookOut,
)
from engine.errors import Unavailable
from engine.webhooks import DeliveryRecord, Subscription, WebhookNotFound, Webhooks
from projections.history import rfc3339

routes = web.RouteTableDef()


def _webhooks(request: web.Request) -> Webhooks:
    webhooks = request.app.get(WEBHOOKS)
    if webhooks is None:
        raise Unavailable("webhooks are not configured in this process")
    return webhooks


def _webhook_id(request: web.Request) -> UUID:
    raw = request.match_info["webhook_id"]
    try:
        return UUID(raw)
    except ValueError:
        raise WebhookNotFound(f"no webhook {raw[:80]!r}") from None


async def _audit(
    request: web.Request, action: str, webhook_id: UUID, details: dict[str, Any]
) -> None:
    await request.app[ACCESS].record(actor_of(request), action, str(webhook_id), details)


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def _out(s: Subscription) -> WebhookOut:
    return WebhookOut(
        webhook_id=str(s.webhook_id),
        namespace=s.namespace,
        url=s.url,
        description=s.description,
        event_types=list(s.event_types),
        statuses=list(s.statuses),
        workflows=list(s.workflows),
        enabled=s.enabled,
        paused_reason=s.paused_reason,
        failing_since=_time(s.failing_since),
        created_at=rfc3339(s.created_at),
        updated_at=rfc3339(s.updated_at),
        previous_secret_until=_time(s.previous_secret_until),
    )


def _delivery_out(d: DeliveryRecord) -> DeliveryOut:
    return DeliveryOut(
        delivery_id=d.delivery_id,
        execution_id=str(d.execution_id),
        seq=d.seq,
        event_type=d.event_type,
        state=d.state,
        attempts=d.attempts,
        next_attempt_at=rfc3339(d.next_attempt_at) if d.state == "pending" else None,
        created_at=rfc3339(d.created_at),
        finished_at=_time(d.finished_at),
        history=[
            AttemptOut(
                attempt=a.attempt,
                at=rfc3339(a.at),
                status_code=a.status_code,
                latency_ms=round(a.latency_ms, 3),
                error=a.error,
                response_excerpt=a.response_excerpt,
            )
            for a in d.history
        ],
    )


@routes.post("/v1/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), CreateWebhook)
    sub = await _webhooks(request).create(
        namespace_of(request),
        url=req.url,
        secret=req.secret,
        description=req.description,
        event_types=req.event_types,
        statuses=req.statuses,
        workflows=req.workflows,
        enabled=req.enabled,
    )
    await _audit(request, "webhook.create", sub.webhook_id, {"url": sub.url})
    return json_response(
        CreatedWebhook(webhook=_out(sub), secret=sub.secret),
        status=201,
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/v1/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    subs = await _webhooks(request).list_webhooks(namespace_of(request))
    return json_response(WebhookList(webhooks=[_out(s) for s in subs]))


@routes.get("/v1/webhooks/{webhook_id}")
async def get_webhook(request: web.Request) -> web.Response:
    sub = await _webhooks(request).get(namespace_of(request), _webhook_id(request))
    return json_response(_out(sub))


@routes.patch("/v1/webhooks/{webhook_id}")
async def update_webhook(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    req = decode_body(await request.read(), UpdateWebhook)
    sub = await _webhooks(request).update(
        namespace_of(request),
        webhook_id,
        url=req.url,
        description=req.description,
        event_types=req.event_types,
        statuses=req.statuses,
        workflows=req.workflows,
        enabled=req.enabled,
    )
    changed = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
    await _audit(request, "webhook.update", webhook_id, changed)
    return json_response(_out(sub))


@routes.delete("/v1/webhooks/{webhook_id}")
async def delete_webhook(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    await _webhooks(request).delete(namespace_of(request), webhook_id)
    await _audit(request, "webhook.delete", webhook_id, {})
    return web.Response(status=204)


@routes.post("/v1/webhooks/{webhook_id}/rotate-secret")
async def rotate_webhook_secret(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    req = decode_body(await request.read(), RotateSecret)
    sub = await _webhooks(request).rotate_secret(namespace_of(request), webhook_id, req.secret)
    await _audit(
        request,
        "webhook.rotate_secret",
        webhook_id,
        {
            "generated": req.secret is None,
            "previous_secret_until": _time(sub.previous_secret_until),
        },
    )
    return json_response(
        RotatedSecret(webhook=_out(sub), secret=sub.secret), headers={"Cache-Control": "no-store"}
    )


@routes.get("/v1/webhooks/{webhook_id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    query = decode_query(request.query, DeliveriesQuery)
    records = await _webhooks(request).deliveries(
        namespace_of(request), webhook_id, state=query.state, limit=query.limit
    )
    return json_response(DeliveryList(deliveries=[_delivery_out(d) for d in records]))


@routes.post("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")
async def replay_delivery(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    record = await _webhooks(request).replay(
        namespace_of(request), webhook_id, request.match_info["delivery_id"]
    )
    await _audit(request, "webhook.replay", webhook_id, {"delivery_id": record.delivery_id})
    return json_response(_delivery_out(record))
