"""API fixtures: the real app (create_app) on a real TCP server (aiohttp TestServer)
over the per-test PostgreSQL database and Redis prefix of tests/conftest.py; `world`:
the same app with authentication on, keys of every kind and a seeded namespace."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from engine.access import Access, Actor
from engine.adapters.activities import ActivityStore
from engine.adapters.bus import Bus
from engine.adapters.outbound import Outbound, OutboundPolicy, parse_allow
from engine.adapters.store import EventStore
from engine.loops.webhooks import WebhookSender
from engine.service import EngineService
from engine.tasks import Tasks
from engine.webhooks import Webhooks, delivery_id
from projections.queries import Queries
from projections.runner import catch_up
from steplog.settings import Settings
from tests.api.helpers import PASS_DEFINITION, api_config


def task_callbacks(service: EngineService, pool: asyncpg.Pool, bus: Bus) -> Tasks:
    return Tasks(service, ActivityStore(pool), bus)


@pytest.fixture
async def client(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, bus: Bus, settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    service = EngineService(store, max_payload_bytes=settings.max_payload_bytes)
    app = create_app(
        service,
        Queries(store, pool, redis.ping),
        api_config(settings),
        Access.over(pool),
        webhooks=Webhooks.over(pool, LOCAL_OUTBOUND),
        task_callbacks=task_callbacks(service, pool, bus),
    )
    async with TestClient(TestServer(app)) as c:
        yield c


OWN, OTHER = "default", "other"
# The API tests' outbound policy: webhooks may point at this machine.
LOCAL_OUTBOUND = OutboundPolicy(allow_networks=parse_allow("127.0.0.1/32,::1/128")[0])
SETUP = Actor(key_id=None, namespace=None, remote="test")


class World(msgspec.Struct):
    """An app with authentication on; ``keys``: a token per kind of caller."""

    client: TestClient[Any, Any]
    pool: asyncpg.Pool
    keys: dict[str, str]
    execution_id: str
    victim_key_id: str
    # A webhook of the own namespace with a delivery (of the seeded execution's seq 1),
    # and one webhook per admin caller of the own namespace for it to delete.
    webhook_id: str = ""
    delivery_id: str = ""
    doomed: dict[str, str] = {}


@pytest.fixture
async def world(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, bus: Bus, settings: Settings
) -> AsyncIterator[World]:
    access = Access.over(pool)
    service = EngineService(store, max_payload_bytes=settings.max_payload_bytes)
    config = msgspec.structs.replace(api_config(settings), auth=True)
    tasks = task_callbacks(service, pool, bus)
    webhooks = Webhooks.over(pool, LOCAL_OUTBOUND)
    app = create_app(
        service,
        Queries(store, pool, redis.ping),
        config,
        access,
        task_callbacks=tasks,
        webhooks=webhooks,
    )
    await access.create_namespace(OTHER, SETUP)
    hook = await webhooks.create(OWN, url="http://127.0.0.1:9/hook")
    doomed = {
        caller: str((await webhooks.create(OWN, url="http://127.0.0.1:9/doomed")).webhook_id)
        for caller in ("own", "global")
    }

    async def key(namespace: str | None, role: str, **extra: Any) -> tuple[str, str]:
        record, token = await access.create_key(
            namespace=namespace, role=role, actor=SETUP, **extra
        )
        return record.key_id, token

    keys = {
        "own": (await key(OWN, "admin"))[1],
        "other": (await key(OTHER, "admin"))[1],
        "reader": (await key(OWN, "reader"))[1],
        "global": (await key(None, "admin"))[1],
        "malformed": "slk_not-a-key",
    }
    revoked_id, keys["revoked"] = await key(OWN, "admin")
    await access.revoke_key(revoked_id, None, SETUP)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    keys["expired"] = (await key(OWN, "admin", expires_at=past))[1]
    victim_key_id, _ = await key(OWN, "reader")
    # A workflow and an ended execution in the own namespace (ended, so its live feed ends).
    await service.register(OWN, "wf", PASS_DEFINITION)
    record, *_ = await service.start(OWN, "wf", b"{}", None, dt.datetime.now(dt.UTC))
    await service.stop(record.execution_id, None, None, dt.datetime.now(dt.UTC))
    await catch_up(pool, store)  # the listing reads the read model
    # Queue the webhook's deliveries of those events (nothing is sent: no sender runs).
    await WebhookSender(webhooks.store, Outbound(LOCAL_OUTBOUND)).queue_new()
    seeded = delivery_id(hook.webhook_id, record.execution_id, 1)
    await tasks.create_activity(OWN, "wf")  # {name} of the activity routes
    async with TestClient(TestServer(app)) as client:
        yield World(
            client,
            pool,
            keys,
            str(record.execution_id),
            victim_key_id,
            webhook_id=str(hook.webhook_id),
            delivery_id=seeded,
            doomed=doomed,
        )
