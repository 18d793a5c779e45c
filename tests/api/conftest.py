"""API fixtures: the real app (create_app) on a real TCP server (aiohttp TestServer)
over the per-test PostgreSQL database and Redis prefix of tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from engine.access import Access
from engine.adapters.store import EventStore
from engine.service import EngineService
from projections.queries import Queries
from steplog.settings import Settings
from tests.api.helpers import api_config


@pytest.fixture
async def client(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    service = EngineService(store, max_payload_bytes=settings.max_payload_bytes)
    app = create_app(
        service, Queries(store, pool, redis.ping), api_config(settings), Access.over(pool)
    )
    async with TestClient(TestServer(app)) as c:
        yield c
