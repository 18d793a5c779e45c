"""Webhook deliveries (engine/loops/webhooks.py) from the real event log to a real aiohttp
receiver, signatures verified with the independent `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine.adapters.outbound import Outbound, OutboundPolicy, parse_allow
from engine.adapters.store import EventStore
from engine.errors import InvalidRequest
from engine.loops.webhooks import WebhookSender
from engine.service import EngineService
from engine.webhooks import (
    DeliveryPolicy,
    Subscription,
    SubscriptionPolicy,
    WebhookLimitExceeded,
    WebhookNotFound,
    Webhooks,
    delivery_id,
    sign,
)
from tests.api.helpers import PASS_DEFINITION
from tests.webhook_receiver import Receiver, serving_receiver

NS = "default"
LOCAL = OutboundPolicy(
    allow_networks=parse_allow("127.0.0.1/32")[0], total_timeout_s=5, connect_timeout_s=2
)
FAST = DeliveryPolicy(retry_base_s=0.05, retry_max_s=0.2, poll_s=0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving_receiver() as r:
        yield r


@pytest.fixture
def service(store: EventStore) -> EngineService:
    return EngineService(store)


@pytest.fixture
def webhooks(pool: asyncpg.Pool) -> Webhooks:
    return Webhooks.over(pool, LOCAL)


@pytest.fixture
async def run_sender(
    webhooks: Webhooks,
) -> AsyncIterator[Callable[..., Awaitable[WebhookSender]]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(
        policy: DeliveryPolicy = FAST, outbound: OutboundPolicy = LOCAL
    ) -> WebhookSender:
        sender = WebhookSender(webhooks.store, Outbound(outbound), policy=policy)
        stop = asyncio.Event()
        stops.append((stop, asyncio.create_task(sender.run(stop))))
        return sender

    yield start
    for stop, task in stops:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _start(service: EngineService, workflow: str = "wf") -> UUID:
    record, *_ = await service.start(NS, workflow, b"{}", None, dt.datetime.now(dt.UTC))
    return record.execution_id


async def _abort(service: EngineService, execution_id: UUID) -> None:
    await service.stop(execution_id, "E", "stopped by the test", dt.datetime.now(dt.UTC))


async def test_events_are_delivered_signed_in_order_with_the_documented_payload(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    before = await _start(service)  # committed before the subscription: not delivered
    sub = await webhooks.create(NS, url=receiver.url)
    receiver.secret = sub.secret
    await run_sender()
    ids = [await _start(service) for _ in range(3)]
    for execution_id in ids:
        await _abort(service, execution_id)
    await eventually(lambda: _count(receiver, 6), timeout_s=10)
    assert not receiver.bad
    got = {(r.body["data"]["execution_id"], r.body["data"]["seq"]) for r in receiver.received}
    assert got == {(str(i), seq) for i in ids for seq in (1, 2)}
    assert str(before) not in {r.body["data"]["execution_id"] for r in receiver.received}
    first = next(r for r in receiver.received if r.body["data"]["seq"] == 1)
    assert first.webhook_id == delivery_id(
        sub.webhook_id, UUID(first.body["data"]["execution_id"]), 1
    )
    assert first.body["type"] == "execution.status_changed"
    assert first.body["data"]["status"] == "RUNNING"
    assert first.body["data"]["event_type"] == "ExecutionStarted"
    assert first.body["data"]["workflow"] == "wf" and first.body["data"]["namespace"] == NS
    assert first.body["data"]["event"]["type"] == "ExecutionStarted"
    aborted = [r for r in receiver.received if r.body["data"]["seq"] == 2]
    assert {r.body["data"]["status"] for r in aborted} == {"ABORTED"}
    for execution_id in ids:  # seq order per execution
        seqs = [
            r.body["data"]["seq"]
            for r in receiver.received
            if r.body["data"]["execution_id"] == str(execution_id)
        ]
        assert seqs == [1, 2]

    async def recorded() -> Any:
        rows = await webhooks.deliveries(NS, sub.webhook_id)
        return rows if {d.state for d in rows} == {"delivered"} else None

    deliveries = await eventually(recorded, timeout_s=5)  # the receipt precedes the record
    assert len(deliveries) == 6
    assert all(d.history[0].status_code == 200 for d in deliveries)
    assert deliveries[0].history[0].response_excerpt == "answer 1"


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) >= n


async def test_filters_by_status_and_event_type_and_workflow(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    await service.register(NS, "other", PASS_DEFINITION)
    ended = await webhooks.create(NS, url=receiver.url, statuses=["ABORTED"], workflows=["wf"])
    started = await webhooks.create(NS, url=receiver.url, event_types=["ExecutionStarted"])
    assert ended.secret != started.secret
    receiver.secret = ended.secret
    receiver.plan = lambda _id, _n: 200
    await run_sender()
    wf, other = await _start(service, "wf"), await _start(service, "other")
    await _abort(service, wf)
    await _abort(service, other)
    await eventually(lambda: _count(receiver, 1), timeout_s=10)
    # The receiver knows one secret: the other subscription's deliveries fail verification.
    await eventually(lambda: _bad(receiver, 2), timeout_s=10)
    assert [
        (r.body["data"]["execution_id"], r.body["data"]["status"]) for r in receiver.received
    ] == [(str(wf), "ABORTED")]
    started_rows = await webhooks.deliveries(NS, started.webhook_id)
    assert sorted((str(d.execution_id), d.event_type) for d in started_rows) == sorted(
        [(str(wf), "ExecutionStarted"), (str(other), "ExecutionStarted")]
    )


async def _all_delivered(webhooks: Webhooks, webhook_id: UUID) -> bool:
    rows = await webhooks.deliveries(NS, webhook_id)
    return bool(rows) and {d.state for d in rows} == {"delivered"}


async def _bad(receiver: Receiver, n: int) -> bool:
    return len(receiver.bad) >= n


async def test_a_receiver_failing_then_answering_gets_retries_with_the_same_id(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    sub = await webhooks.create(NS, url=receiver.url)
    receiver.secret = sub.secret
    failing = await _start(service)
    failing_first = delivery_id(sub.webhook_id, failing, 1)
    # The first event of `failing` is answered 500 twice, then 200.
    receiver.plan = lambda wid, n: 500 if wid == failing_first and n <= 2 else 200
    await run_sender()
    await _abort(service, failing)
    healthy = await _start(service)
    await _abort(service, healthy)
    await eventually(lambda: _count(receiver, 4), timeout_s=10)
    await eventually(lambda: _all_delivered(webhooks, sub.webhook_id), timeout_s=5)
    order = [(r.body["data"]["execution_id"], r.body["data"]["seq"]) for r in receiver.received]
    # In order per execution: seq 2 of `failing` only after its seq 1 got through.
    assert order.index((str(failing), 1)) < order.index((str(failing), 2))
    rows = {d.delivery_id: d for d in await webhooks.deliveries(NS, sub.webhook_id)}
    retried = rows[failing_first]
    assert retried.state == "delivered" and retried.attempts == 3
    assert [a.status_code for a in retried.history] == [500, 500, 200]
    assert [a.error for a in retried.history] == ["HTTP 500", "HTTP 500", None]
    assert receiver.calls[failing_first] == 3
    current = await webhooks.get(NS, sub.webhook_id)
    assert current.enabled and current.failing_since is None  # cleared by the success


async def test_a_failing_execution_holds_back_only_its_own_later_events(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    sub = await webhooks.create(NS, url=receiver.url)
    receiver.secret = sub.secret
    stuck = await _start(service)
    stuck_first = delivery_id(sub.webhook_id, stuck, 1)
    receiver.plan = lambda wid, _n: 503 if wid == stuck_first else 200
    await run_sender()
    await _abort(service, stuck)
    others = [await _start(service) for _ in range(3)]
    for execution_id in others:
        await _abort(service, execution_id)
    await eventually(lambda: _count(receiver, 6), timeout_s=10)
    await eventually(lambda: _calls(receiver, stuck_first, 3), timeout_s=10)
    assert {r.body["data"]["execution_id"] for r in receiver.received} == {str(i) for i in others}
    rows = {d.delivery_id: d for d in await webhooks.deliveries(NS, sub.webhook_id)}
    assert rows[delivery_id(sub.webhook_id, stuck, 2)].attempts == 0  # held back


async def _calls(receiver: Receiver, webhook_id: str, n: int) -> bool:
    return receiver.calls.get(webhook_id, 0) >= n


async def test_dead_letter_after_the_horizon_then_pause_then_replay_by_hand(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    sub = await webhooks.create(NS, url=receiver.url, statuses=["RUNNING"])
    receiver.secret = sub.secret
    receiver.plan = lambda _id, _n: 500
    policy = DeliveryPolicy(
        retry_base_s=0.05, retry_max_s=0.1, retry_horizon_s=0.3, pause_after_s=0.4, poll_s=0.05
    )
    await run_sender(policy)
    first = await _start(service)
    first_id = delivery_id(sub.webhook_id, first, 1)

    async def dead() -> bool:
        rows = await webhooks.deliveries(NS, sub.webhook_id, state="dead")
        return any(d.delivery_id == first_id for d in rows)

    await eventually(dead, timeout_s=10)
    # Still failing past pause_after_s: the subscription pauses and says why.
    second = await _start(service)

    async def paused() -> Any:
        current = await webhooks.get(NS, sub.webhook_id)
        return current if not current.enabled else None

    current = await eventually(paused, timeout_s=10)
    assert current.paused_reason is not None and "HTTP 500" in current.paused_reason
    assert current.paused_reason.startswith("failing since ")
    calls = dict(receiver.calls)
    receiver.plan = lambda _id, _n: 200
    # Replayed by hand and resumed: the dead delivery and the held one get through.
    replayed = await webhooks.replay(NS, sub.webhook_id, first_id)
    assert replayed.state == "pending"
    resumed = await webhooks.update(NS, sub.webhook_id, enabled=True)
    assert resumed.enabled and resumed.paused_reason is None and resumed.failing_since is None
    await eventually(lambda: _count(receiver, 2), timeout_s=10)
    assert first_id in {r.webhook_id for r in receiver.received}
    assert {r.body["data"]["execution_id"] for r in receiver.received} == {str(first), str(second)}
    assert receiver.calls[first_id] > calls[first_id]


async def test_private_addresses_refused_by_default(
    service: EngineService, pool: asyncpg.Pool, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    strict = Webhooks.over(pool)  # the default policy: no private address
    with pytest.raises(InvalidRequest, match="address not allowed"):
        await strict.create(NS, url="http://10.1.2.3/hook")
    with pytest.raises(InvalidRequest, match="address not allowed"):
        await strict.create(NS, url="http://169.254.169.254/latest")
    # A host name passes creation; the guard refuses the address it resolves to.
    port = receiver.url.split(":")[2].split("/")[0]
    sub = await strict.create(NS, url=f"http://localhost:{port}/hook")
    await service.register(NS, "wf", PASS_DEFINITION)
    await run_sender(outbound=OutboundPolicy())
    await _start(service)

    async def refused() -> Any:
        rows = await strict.deliveries(NS, sub.webhook_id)
        return rows if rows and rows[0].history else None

    rows = await eventually(refused, timeout_s=10)
    attempt = rows[0].history[0]
    assert attempt.status_code is None and attempt.error is not None
    assert attempt.error.startswith("outbound_refused")
    assert not receiver.calls


async def test_secrets_given_generated_and_refused(webhooks: Webhooks) -> None:
    generated = await webhooks.create(NS, url="http://127.0.0.1:9/x")
    assert generated.secret.startswith("whsec_")
    given = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes
    sub = await webhooks.create(NS, url="http://127.0.0.1:9/x", secret=given)
    assert sub.secret == given
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(given, "msg_1", now, b'{"a":1}'),
    }
    assert Webhook(given).verify(b'{"a":1}', headers) == {"a": 1}
    for bad in ("nope", "whsec_!!!", "whsec_" + "QUFB"):
        with pytest.raises(InvalidRequest, match="secret"):
            await webhooks.create(NS, url="http://127.0.0.1:9/x", secret=bad)
    with pytest.raises(InvalidRequest, match="unknown event types"):
        await webhooks.create(NS, url="http://127.0.0.1:9/x", event_types=["NoSuchEvent"])


async def test_deleting_a_subscription_while_it_delivers_leaves_the_role_running(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    doomed = await webhooks.create(NS, url=receiver.url)
    kept = await webhooks.create(NS, url=receiver.url, secret=doomed.secret)
    receiver.secret = doomed.secret
    receiver.delay_s = 0.2  # the delete lands while requests are in flight
    sender = await run_sender()
    first = await _start(service)
    await eventually(lambda: _sent_some(sender), timeout_s=10)
    await webhooks.delete(NS, doomed.webhook_id)
    receiver.delay_s = 0.0
    second = await _start(service)
    await eventually(lambda: _all_delivered(webhooks, kept.webhook_id), timeout_s=10)
    rows = await webhooks.deliveries(NS, kept.webhook_id)
    assert {d.execution_id for d in rows} == {first, second}
    with pytest.raises(WebhookNotFound):
        await webhooks.deliveries(NS, doomed.webhook_id)


async def _sent_some(sender: WebhookSender) -> bool:
    return sender.sent > 0 or bool(sender._in_flight)


async def test_two_senders_share_the_work_and_send_each_delivery_once(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    sub = await webhooks.create(NS, url=receiver.url)
    receiver.secret = sub.secret
    receiver.delay_s = 0.01
    senders = [await run_sender(), await run_sender()]
    ids = [await _start(service) for _ in range(15)]
    for execution_id in ids:
        await _abort(service, execution_id)
    await eventually(lambda: _count(receiver, 30), timeout_s=20)
    await eventually(lambda: _all_delivered(webhooks, sub.webhook_id), timeout_s=5)
    keys = [(r.body["data"]["execution_id"], r.body["data"]["seq"]) for r in receiver.received]
    assert sorted(keys) == sorted((str(i), seq) for i in ids for seq in (1, 2))  # once each
    assert sum(s.sent for s in senders) == 30
    assert sum(s.queued for s in senders) == 30  # each event queued by one of them only


async def test_a_binary_answer_is_recorded_as_an_excerpt(
    service: EngineService, webhooks: Webhooks, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    sub = await webhooks.create(NS, url=receiver.url)
    receiver.secret = sub.secret
    receiver.reply = b"\x00\xff ok" + b"z" * 5000
    await run_sender()
    await _start(service)
    await eventually(lambda: _all_delivered(webhooks, sub.webhook_id), timeout_s=10)
    (row,) = await webhooks.deliveries(NS, sub.webhook_id)
    excerpt = row.history[0].response_excerpt
    assert excerpt.startswith("\ufffd\ufffd ok") and len(excerpt.encode()) <= 1024 + 4


async def _latest_request(
    receiver: Receiver, n: int, eventually: Any
) -> tuple[bytes, dict[str, str]]:
    """The request that brought the ``n``-th accepted delivery."""
    await eventually(lambda: _count(receiver, n), timeout_s=10)
    assert len(receiver.requests) == n and not receiver.bad, receiver.bad
    return receiver.requests[-1]


def _verifies(secret: str, request: tuple[bytes, dict[str, str]]) -> bool:
    """Whether a verifier holding only ``secret`` accepts ``request``."""
    try:
        Webhook(secret).verify(*request)
    except WebhookVerificationError:
        return False
    return True


async def test_a_rotated_secret_signs_alongside_the_new_one_until_the_overlap_ends(
    service: EngineService, pool: asyncpg.Pool, receiver: Receiver, run_sender: Any, eventually: Any
) -> None:
    await service.register(NS, "wf", PASS_DEFINITION)
    day = Webhooks.over(pool, LOCAL, SubscriptionPolicy(secret_overlap_s=86400))
    brief = Webhooks.over(pool, LOCAL, SubscriptionPolicy(secret_overlap_s=0.2))
    sub = await day.create(NS, url=receiver.url, statuses=["RUNNING"])
    first = sub.secret
    second = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # given (24 bytes)
    rotated = await day.rotate_secret(NS, sub.webhook_id, second)
    assert rotated.secret == second and rotated.previous_secret_until is not None
    assert rotated.previous_secret_until > rotated.updated_at + dt.timedelta(hours=23)
    receiver.secret = second
    await run_sender()

    # During the overlap: two signatures, the new one first; each verifier accepts alone.
    await _start(service)
    request = await _latest_request(receiver, 1, eventually)
    assert request[1]["webhook-signature"].count("v1,") == 2
    assert _verifies(first, request) and _verifies(second, request)

    # Rotating again during the overlap drops the oldest secret.
    third = (await day.rotate_secret(NS, sub.webhook_id)).secret  # generated
    assert third.startswith("whsec_") and third not in (first, second)
    receiver.secret = third
    await _start(service)
    request = await _latest_request(receiver, 2, eventually)
    assert _verifies(third, request) and _verifies(second, request)
    assert not _verifies(first, request)

    # After the overlap (0.2 s by PostgreSQL's clock): only the new secret signs.
    fourth = (await brief.rotate_secret(NS, sub.webhook_id)).secret
    receiver.secret = fourth

    async def overlap_over() -> bool:
        return (await brief.get(NS, sub.webhook_id)).previous_secret_until is None

    await eventually(overlap_over, timeout_s=10)
    await _start(service)
    request = await _latest_request(receiver, 3, eventually)
    assert request[1]["webhook-signature"].count("v1,") == 1
    assert _verifies(fourth, request) and not _verifies(third, request)
    listed = await day.list_webhooks(NS)
    assert [w.secret for w in listed] == [fourth]


async def test_rotating_refuses_a_bad_secret_and_an_unknown_or_foreign_subscription(
    webhooks: Webhooks,
) -> None:
    sub = await webhooks.create(NS, url="http://127.0.0.1:9/x")
    for bad in ("nope", "whsec_!!!", "whsec_" + "QUFB"):
        with pytest.raises(InvalidRequest, match="secret"):
            await webhooks.rotate_secret(NS, sub.webhook_id, bad)
    for namespace, webhook_id in ((NS, UUID(int=1)), ("other", sub.webhook_id)):
        with pytest.raises(WebhookNotFound):
            await webhooks.rotate_secret(namespace, webhook_id)
    unchanged = await webhooks.get(NS, sub.webhook_id)
    assert unchanged.secret == sub.secret and unchanged.previous_secret_until is None


async def test_concurrent_creates_never_go_past_the_cap_of_their_namespace(
    pool: asyncpg.Pool,
) -> None:
    capped = Webhooks.over(pool, LOCAL, SubscriptionPolicy(max_per_namespace=3))
    barrier = asyncio.Barrier(12)

    async def create(n: int) -> Subscription | BaseException:
        await barrier.wait()  # all twelve go at once, on as many pooled connections
        try:
            return await capped.create(NS, url=f"http://127.0.0.1:9/{n}", enabled=n % 2 == 0)
        except WebhookLimitExceeded as exc:
            return exc

    results = await asyncio.gather(*(create(n) for n in range(12)))
    made = [r for r in results if isinstance(r, Subscription)]
    refused = [r for r in results if isinstance(r, WebhookLimitExceeded)]
    assert (len(made), len(refused)) == (3, 9)
    assert "STEPLOG_WEBHOOK_MAX_PER_NAMESPACE=3" in refused[0].message
    assert refused[0].status == 409 and refused[0].code == "webhook_limit_exceeded"
    assert (
        await pool.fetchval("SELECT count(*) FROM webhook_subscriptions WHERE namespace = $1", NS)
        == 3
    )
    # Per namespace: another one has its own three; a delete makes room again.
    await capped.create("other", url="http://127.0.0.1:9/o")
    await capped.delete(NS, made[0].webhook_id)
    await capped.create(NS, url="http://127.0.0.1:9/again")
    with pytest.raises(WebhookLimitExceeded):
        await capped.create(NS, url="http://127.0.0.1:9/over")
    # 0: no cap.
    unlimited = Webhooks.over(pool, LOCAL, SubscriptionPolicy(max_per_namespace=0))
    await unlimited.create(NS, url="http://127.0.0.1:9/beyond")
    assert len(await unlimited.list_webhooks(NS)) == 4


async def test_with_no_subscription_appends_wake_nothing_and_a_new_one_is_found_by_polling(
    pool: asyncpg.Pool,
    service: EngineService,
    webhooks: Webhooks,
    receiver: Receiver,
    eventually: Any,
) -> None:
    """A sender listening for appends (as in `steplog dev`) looks for work only at its
    poll while no subscription is enabled; one created then gets every later event."""
    from engine.adapters.notifier import EventNotifier

    class Counting(type(webhooks.store)):  # type: ignore[misc]
        looks = 0

        async def enabled(self) -> Any:
            Counting.looks += 1
            return await super().enabled()

    store = Counting(pool)
    sender = WebhookSender(
        store,
        Outbound(LOCAL),
        notifier=EventNotifier(pool),
        policy=DeliveryPolicy(retry_base_s=0.05, retry_max_s=0.2, poll_s=1.0),
    )
    await service.register(NS, "wf", PASS_DEFINITION)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await asyncio.sleep(0.2)
        before = Counting.looks
        began = time.monotonic()
        for _ in range(20):
            execution_id = await _start(service)
            await _abort(service, execution_id)
        polls = int((time.monotonic() - began) / 1.0) + 1
        assert Counting.looks - before <= polls  # 40 appends, no look for any of them
        sub = await webhooks.create(NS, url=receiver.url)
        receiver.secret = sub.secret
        after = await _start(service)
        await eventually(lambda: _count(receiver, 1), timeout_s=10)
        assert {r.body["data"]["execution_id"] for r in receiver.received} == {str(after)}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
