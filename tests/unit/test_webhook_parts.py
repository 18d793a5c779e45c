"""What a webhook delivery is made of (engine/webhooks.py): the back-off, the filter, the
payload, the delivery id, and the signature as the independent standardwebhooks verifier
reads it."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine.adapters.webhooks_store import LoggedEvent, Subscription
from engine.webhooks import (
    DeliveryPolicy,
    SubscriptionPolicy,
    delivery_id,
    matches,
    new_secret,
    payload,
    secret_key,
    sign,
    signatures,
)
from steplog.settings import Settings

NOW = dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.UTC)


def _sub(**kw: object) -> Subscription:
    fields: dict[str, object] = {
        "webhook_id": uuid.uuid4(),
        "namespace": "ns",
        "url": "http://x/",
        "secret": new_secret(),
        "description": "",
        "event_types": (),
        "statuses": (),
        "workflows": (),
        "enabled": True,
        "paused_reason": None,
        "failing_since": None,
        "tx_id": 0,
        "position": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }
    fields.update(kw)
    return Subscription(**fields)  # type: ignore[arg-type]


def _event(type: str = "TaskStateEntered", **kw: object) -> LoggedEvent:
    fields: dict[str, object] = {
        "execution_id": uuid.UUID(int=7),
        "seq": 3,
        "position": 10,
        "tx_id": 5,
        "type": type,
        "data": msgspec.json.encode(
            {"type": type, "timestamp": "2026-11-30T16:00:00.000Z"}
        ).decode(),
        "recorded_at": NOW,
        "namespace": "ns",
        "workflow": "wf",
        "execution_name": "run-1",
    }
    fields.update(kw)
    return LoggedEvent(**fields)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_cap_and_jitter_takes_at_most_half() -> None:
    policy = DeliveryPolicy(retry_base_s=1, retry_max_s=10)
    assert [policy.backoff_s(n, 0.0) for n in (1, 2, 3, 4, 5, 50)] == [1, 2, 4, 8, 10, 10]
    assert policy.backoff_s(3, 0.999) == pytest.approx(4 * (1 - 0.999 / 2))
    assert policy.backoff_s(10_000, 0.5) == 7.5  # no overflow for absurd attempt counts


def test_filter() -> None:
    every = _sub()
    assert matches(every, _event()) and not matches(every, _event(namespace="other"))
    ended = _sub(statuses=("SUCCEEDED", "RUNNING"))
    assert matches(ended, _event("ExecutionSucceeded")) and matches(
        ended, _event("ExecutionStarted")
    )
    assert not matches(ended, _event("ExecutionFailed")) and not matches(ended, _event())
    typed = _sub(event_types=("TaskFailed",), statuses=("FAILED",), workflows=("wf",))
    assert matches(typed, _event("TaskFailed")) and matches(typed, _event("ExecutionFailed"))
    assert not matches(typed, _event("TaskFailed", workflow="other"))


def test_payload() -> None:
    body = msgspec.json.decode(payload(_event("ExecutionTimedOut")))
    assert body == {
        "type": "execution.status_changed",
        "timestamp": "2026-11-30T16:00:00.000Z",
        "data": {
            "namespace": "ns",
            "workflow": "wf",
            "execution_id": str(uuid.UUID(int=7)),
            "execution_name": "run-1",
            "seq": 3,
            "event_type": "ExecutionTimedOut",
            "status": "TIMED_OUT",
            "event": {"type": "ExecutionTimedOut", "timestamp": "2026-11-30T16:00:00.000Z"},
        },
    }
    other = msgspec.json.decode(payload(_event()))
    assert other["type"] == "execution.event" and other["data"]["status"] == "RUNNING"


def test_delivery_ids_are_stable_and_distinct() -> None:
    a, b, x = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert delivery_id(a, x, 1) == delivery_id(a, x, 1)
    assert len({delivery_id(a, x, 1), delivery_id(a, x, 2), delivery_id(b, x, 1)}) == 3
    assert delivery_id(a, x, 1).startswith("msg_")


def test_signatures_verify_with_the_reference_library_and_forgeries_do_not() -> None:
    secret = new_secret()
    assert len(secret_key(secret)) == 32
    body = payload(_event())
    now = int(time.time())
    headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "msg_x", now, body),
    }
    assert Webhook(secret).verify(body, headers)["data"]["seq"] == 3
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b'"seq":3', b'"seq":4'), headers)


def test_during_an_overlap_both_secrets_sign_and_each_verifies_alone() -> None:
    new, old, stranger = new_secret(), new_secret(), new_secret()
    body = payload(_event())
    now = int(time.time())
    header = signatures([new, old], "msg_x", now, body)
    assert header == f"{sign(new, 'msg_x', now, body)} {sign(old, 'msg_x', now, body)}"
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(now), "webhook-signature": header}
    assert Webhook(new).verify(body, headers)["data"]["seq"] == 3
    assert Webhook(old).verify(body, headers)["data"]["seq"] == 3
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers)


def test_a_secret_given_twice_signs_once() -> None:
    secret = new_secret()
    assert signatures([secret, secret], "msg_x", 1, b"{}") == sign(secret, "msg_x", 1, b"{}")


def test_rotation_overlap_and_cap_settings_are_read_and_bounded() -> None:
    settings = Settings.from_env(
        {"STEPLOG_WEBHOOK_SECRET_OVERLAP_S": "60", "STEPLOG_WEBHOOK_MAX_PER_NAMESPACE": "3"}
    )
    assert settings.subscription_policy() == SubscriptionPolicy(
        secret_overlap_s=60, max_per_namespace=3
    )
    assert Settings.from_env({}).subscription_policy() == SubscriptionPolicy(
        secret_overlap_s=86400, max_per_namespace=100
    )
    for name, bad in (
        ("STEPLOG_WEBHOOK_SECRET_OVERLAP_S", "-1"),
        ("STEPLOG_WEBHOOK_MAX_PER_NAMESPACE", "-1"),
        ("STEPLOG_WEBHOOK_SECRET_OVERLAP_S", "1e300"),
        ("STEPLOG_WEBHOOK_MAX_PER_NAMESPACE", "10000000000"),
        ("STEPLOG_WEBHOOK_MAX_PER_NAMESPACE", "many"),
    ):
        with pytest.raises(ValueError, match=r"STEPLOG_WEBHOOK|webhook"):
            Settings.from_env({name: bad})
