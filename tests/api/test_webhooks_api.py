"""/v1/webhooks over HTTP: the subscription routes and their refusals, and a whole steplog
(every role, the webhooks role included) delivering to a real receiver; the CLI."""

from __future__ import annotations

import io
from typing import Any

import asyncpg
import msgspec
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from api.webhook_schemas import (
    CreatedWebhook,
    DeliveryList,
    RotatedSecret,
    WebhookList,
    WebhookOut,
)
from engine.access import Access
from engine.webhooks import Webhooks
from steplog.cli import _parser
from steplog.settings import Settings
from steplog.webhooks_cli import run as run_webhooks_cli
from tests.api.conftest import LOCAL_OUTBOUND
from tests.api.helpers import PASS_DEFINITION, row_counts
from tests.serving import running_steplog
from tests.webhook_receiver import serving_receiver

GIVEN_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes

Client = TestClient[Any, Any]


async def _json(resp: Any, status: int) -> Any:
    body = await resp.read()
    assert resp.status == status, body
    return msgspec.json.decode(body) if body else None


async def test_create_list_get_pause_resume_delete(client: Client) -> None:
    created = msgspec.convert(
        await _json(
            await client.post(
                "/v1/webhooks",
                json={"url": "http://127.0.0.1:9/h", "statuses": ["FAILED"], "description": "d"},
            ),
            201,
        ),
        CreatedWebhook,
    )
    assert created.secret.startswith("whsec_")
    hook = created.webhook
    assert (hook.statuses, hook.enabled, hook.description) == (["FAILED"], True, "d")
    listed = msgspec.convert(await _json(await client.get("/v1/webhooks"), 200), WebhookList)
    assert [w.webhook_id for w in listed.webhooks] == [hook.webhook_id]
    raw = await (await client.get("/v1/webhooks")).read()
    assert created.secret.encode() not in raw  # the secret is shown once only
    path = f"/v1/webhooks/{hook.webhook_id}"
    paused = msgspec.convert(
        await _json(await client.patch(path, json={"enabled": False}), 200), WebhookOut
    )
    assert not paused.enabled and paused.paused_reason == "paused by hand"
    changed = msgspec.convert(
        await _json(await client.patch(path, json={"enabled": True, "workflows": ["wf"]}), 200),
        WebhookOut,
    )
    assert changed.enabled and changed.paused_reason is None and changed.workflows == ["wf"]
    assert changed.statuses == ["FAILED"]  # what is not given is kept
    fetched = msgspec.convert(await _json(await client.get(path), 200), WebhookOut)
    assert fetched == changed
    deliveries = msgspec.convert(
        await _json(await client.get(path + "/deliveries"), 200), DeliveryList
    )
    assert deliveries.deliveries == []
    assert (await client.delete(path)).status == 204
    problem = await _json(await client.get(path), 404)
    assert problem["code"] == "webhook_not_found"


async def test_refusals_are_4xx_with_codes_and_change_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    created = await _json(
        await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}), 201
    )
    path = f"/v1/webhooks/{created['webhook']['webhook_id']}"
    before = await row_counts(pool)
    for body, status, code in (
        ({"url": "http://10.0.0.1/h"}, 422, "invalid_webhook"),
        ({"url": "http://169.254.169.254/latest"}, 422, "invalid_webhook"),
        ({"url": "ftp://example.com/"}, 422, "invalid_body"),
        ({"url": "http://127.0.0.1:9/h", "secret": "whsec_" + "QUFB" * 22}, 422, "invalid_webhook"),
        ({"url": "http://127.0.0.1:9/h", "secret": "plain"}, 422, "invalid_body"),
        ({"url": "http://127.0.0.1:9/h", "statuses": ["DONE"]}, 422, "invalid_body"),
        ({"url": "http://127.0.0.1:9/h", "event_types": ["Nope"]}, 422, "invalid_webhook"),
        ({"url": "http://127.0.0.1:9/h", "extra": 1}, 422, "invalid_body"),
        ({}, 422, "invalid_body"),
    ):
        problem = await _json(await client.post("/v1/webhooks", json=body), status)
        assert problem["code"] == code, (body, problem)
    problem = await _json(await client.patch(path, json={"url": "http://192.168.1.1/"}), 422)
    assert problem["code"] == "invalid_webhook"
    for bad in ("/v1/webhooks/not-a-uuid", "/v1/webhooks/00000000-0000-0000-0000-000000000000"):
        assert (await _json(await client.get(bad), 404))["code"] == "webhook_not_found"
        assert (await _json(await client.delete(bad), 404))["code"] == "webhook_not_found"
    problem = await _json(await client.post(path + "/deliveries/msg_nope/replay"), 404)
    assert problem["code"] == "delivery_not_found"
    problem = await _json(await client.get(path + "/deliveries?state=lost"), 400)
    assert problem["code"] == "invalid_request"
    assert await row_counts(pool) == before


async def test_a_whole_steplog_delivers_and_replays_through_the_api(
    settings: Settings, eventually: Any
) -> None:
    settings = msgspec.structs.replace(
        settings, outbound_allow="127.0.0.1/32", webhook_retry_base_s=0.05, webhook_poll_s=0.05
    )
    async with serving_receiver() as receiver, running_steplog(settings) as app:
        await app.register("wf", PASS_DEFINITION)
        status, created = await app.call(
            "POST", "/v1/webhooks", {"url": receiver.url, "statuses": ["SUCCEEDED"]}
        )
        assert status == 201, created
        receiver.secret = created["secret"]
        hook = created["webhook"]["webhook_id"]
        execution_id = await app.start_id("wf", {"n": 1})

        async def delivered() -> Any:
            _, body = await app.call("GET", f"/v1/webhooks/{hook}/deliveries")
            rows = body["deliveries"]
            return rows if rows and rows[0]["state"] == "delivered" else None

        rows = await eventually(delivered, timeout_s=15)
        assert not receiver.bad
        assert len(receiver.received) == 1
        got = receiver.received[0]
        assert got.body["data"]["execution_id"] == execution_id
        assert got.body["data"]["status"] == "SUCCEEDED"
        assert got.body["data"]["event"]["output"] == {"n": 1}
        assert rows[0]["history"][0]["status_code"] == 200
        delivery = rows[0]["delivery_id"]
        assert delivery == got.webhook_id
        status, replayed = await app.call(
            "POST", f"/v1/webhooks/{hook}/deliveries/{delivery}/replay"
        )
        assert status == 200 and replayed["state"] == "pending", replayed

        async def twice() -> bool:
            return len(receiver.received) == 2

        await eventually(twice, timeout_s=15)
        assert receiver.received[1].webhook_id == delivery


async def test_cli_create_list_pause_resume_delete(pool: asyncpg.Pool) -> None:
    webhooks, access = Webhooks.over(pool, LOCAL_OUTBOUND), Access.over(pool)

    async def cli(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = await run_webhooks_cli(_parser().parse_args(argv), webhooks, access, "default", out)
        return code, out.getvalue()

    code, out = await cli(
        "webhooks", "create", "http://127.0.0.1:9/h", "--statuses", "FAILED,TIMED_OUT"
    )
    assert code == 0 and "secret (shown once): whsec_" in out, out
    webhook_id = out.split()[0]
    code, out = await cli("webhooks", "pause", webhook_id)
    assert code == 0 and "paused (paused by hand)" in out
    code, out = await cli("webhooks", "list")
    assert code == 0 and webhook_id in out and "FAILED,TIMED_OUT" in out and "whsec_" not in out
    code, out = await cli("webhooks", "resume", webhook_id)
    assert code == 0 and "enabled" in out
    code, out = await cli("webhooks", "delete", webhook_id)
    assert code == 0
    code, _ = await cli("webhooks", "delete", webhook_id)
    assert code == 1
    code, _ = await cli("webhooks", "create", "http://10.0.0.1/")
    assert code == 1
    trail = [a.action for a in await access.audit_trail(None, None, 10)]
    assert trail[:4] == ["webhook.delete", "webhook.resume", "webhook.pause", "webhook.create"]


async def test_cli_rotate_secret(pool: asyncpg.Pool) -> None:
    webhooks, access = Webhooks.over(pool, LOCAL_OUTBOUND), Access.over(pool)

    async def cli(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = await run_webhooks_cli(_parser().parse_args(argv), webhooks, access, "default", out)
        return code, out.getvalue()

    sub = await webhooks.create("default", url="http://127.0.0.1:9/h")
    code, out = await cli("webhooks", "rotate-secret", str(sub.webhook_id))
    assert code == 0 and "secret (shown once): whsec_" in out, out
    assert "the previous secret signs too until " in out
    generated = out.split("secret (shown once): ")[1].split()[0]
    assert generated != sub.secret
    code, out = await cli(
        "webhooks", "rotate-secret", str(sub.webhook_id), "--secret", GIVEN_SECRET
    )
    assert code == 0 and f"secret (shown once): {GIVEN_SECRET}" in out
    assert await _secrets(pool, str(sub.webhook_id)) == (GIVEN_SECRET, generated)
    for argv in (
        (str(sub.webhook_id), "--secret", "whsec_short"),
        (str(sub.webhook_id), "--namespace", "other"),
        ("00000000-0000-0000-0000-000000000000",),
    ):
        code, _ = await cli("webhooks", "rotate-secret", *argv)
        assert code == 1, argv
    assert await _secrets(pool, str(sub.webhook_id)) == (GIVEN_SECRET, generated)
    trail = await access.audit_trail(None, None, 10)
    assert [a.action for a in trail][:2] == ["webhook.rotate_secret"] * 2
    assert all("whsec_" not in a.details for a in trail)


async def _secrets(pool: asyncpg.Pool, webhook_id: str) -> tuple[str, str | None]:
    row = await pool.fetchrow(
        "SELECT secret, previous_secret FROM webhook_subscriptions WHERE webhook_id = $1::uuid",
        webhook_id,
    )
    assert row is not None
    return row["secret"], row["previous_secret"]


async def test_rotate_secret_answers_the_new_secret_once_and_audits_it(
    client: Client, pool: asyncpg.Pool
) -> None:
    created = await _json(
        await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}), 201
    )
    path = f"/v1/webhooks/{created['webhook']['webhook_id']}"
    assert created["webhook"]["previous_secret_until"] is None
    resp = await client.post(path + "/rotate-secret")  # no body: a secret is generated
    assert resp.headers["Cache-Control"] == "no-store"
    generated = msgspec.convert(await _json(resp, 200), RotatedSecret)
    assert generated.secret.startswith("whsec_") and generated.secret != created["secret"]
    assert generated.webhook.previous_secret_until is not None
    assert generated.webhook.previous_secret_until > generated.webhook.updated_at
    given = msgspec.convert(
        await _json(await client.post(path + "/rotate-secret", json={"secret": GIVEN_SECRET}), 200),
        RotatedSecret,
    )
    assert given.secret == GIVEN_SECRET
    # The replaced secret signs along; the one before it is gone.
    assert await _secrets(pool, given.webhook.webhook_id) == (GIVEN_SECRET, generated.secret)
    for listing in (path, "/v1/webhooks"):
        raw = await (await client.get(listing)).read()
        for secret in (created["secret"], generated.secret, GIVEN_SECRET):
            assert secret.encode() not in raw  # each secret is shown once only
    fetched = msgspec.convert(await _json(await client.get(path), 200), WebhookOut)
    assert fetched.previous_secret_until == given.webhook.previous_secret_until
    trail = await Access.over(pool).audit_trail(None, None, 10)
    rotations = [a for a in trail if a.action == "webhook.rotate_secret"]
    assert len(rotations) == 2 and {a.target for a in rotations} == {fetched.webhook_id}
    assert [msgspec.json.decode(a.details)["generated"] for a in rotations] == [False, True]
    for a in rotations:
        assert "whsec_" not in a.details


async def test_rotate_secret_refusals_are_4xx_and_change_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    created = await _json(
        await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}), 201
    )
    webhook_id = created["webhook"]["webhook_id"]
    path = f"/v1/webhooks/{webhook_id}/rotate-secret"
    before = await row_counts(pool), await _secrets(pool, webhook_id)
    for body, status, code in (
        ({"secret": "plain"}, 422, "invalid_body"),
        ({"secret": "whsec_" + "QUFB" * 22}, 422, "invalid_webhook"),  # 66 bytes
        ({"secret": 5}, 422, "invalid_body"),
        ({"secret": GIVEN_SECRET, "extra": 1}, 422, "invalid_body"),
        ([GIVEN_SECRET], 422, "invalid_body"),
    ):
        problem = await _json(await client.post(path, json=body), status)
        assert problem["code"] == code, (body, problem)
    problem = await _json(
        await client.post(path, data=b"{nope", headers={"Content-Type": "application/json"}), 400
    )
    assert problem["code"] == "malformed_json"
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        problem = await _json(await client.post(f"/v1/webhooks/{bad}/rotate-secret"), 404)
        assert problem["code"] == "webhook_not_found"
    assert (await row_counts(pool), await _secrets(pool, webhook_id)) == before


async def test_a_create_past_the_cap_is_409_naming_the_limit_and_changes_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    webhooks = Webhooks.over(pool, LOCAL_OUTBOUND)  # the default cap: 100
    for n in range(100):
        await webhooks.create("default", url=f"http://127.0.0.1:9/{n}")
    before = await row_counts(pool)
    problem = await _json(
        await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}), 409
    )
    assert problem["code"] == "webhook_limit_exceeded"
    assert "STEPLOG_WEBHOOK_MAX_PER_NAMESPACE=100" in problem["detail"]
    assert await row_counts(pool) == before


async def test_a_whole_steplog_rotates_with_an_overlap_and_holds_the_cap(
    settings: Settings, eventually: Any
) -> None:
    """The settings reach the API role and the webhooks role: during the overlap a
    receiver still holding only the old secret accepts, and so does one with the new."""
    settings = msgspec.structs.replace(
        settings, outbound_allow="127.0.0.1/32", webhook_poll_s=0.05, webhook_max_per_namespace=1
    )
    async with serving_receiver() as receiver, running_steplog(settings) as app:
        await app.register("wf", PASS_DEFINITION)
        status, created = await app.call(
            "POST", "/v1/webhooks", {"url": receiver.url, "statuses": ["SUCCEEDED"]}
        )
        assert status == 201, created
        hook = created["webhook"]["webhook_id"]
        status, refused = await app.call("POST", "/v1/webhooks", {"url": receiver.url})
        assert (status, refused["code"]) == (409, "webhook_limit_exceeded"), refused
        status, rotated = await app.call("POST", f"/v1/webhooks/{hook}/rotate-secret", {})
        assert status == 200, rotated
        receiver.secret = created["secret"]  # a receiver not yet told of the rotation
        await app.start_id("wf", {"n": 1})

        async def received() -> bool:
            return len(receiver.received) == 1

        await eventually(received, timeout_s=15)
        assert not receiver.bad
        delivered = Webhook(rotated["secret"]).verify(*receiver.requests[0])
        assert delivered["data"]["status"] == "SUCCEEDED"
