"""Typed application keys: how handlers reach the dependencies `create_app` was
given. The API never closes what these point at; their owner (steplog/) does."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from api.metrics import HttpMetrics
from engine.adapters.store import EventStore
from engine.service import EngineService
from steplog.settings import Settings

SERVICE = web.AppKey("steplog_service", EngineService)
STORE = web.AppKey("steplog_store", EventStore)
POOL = web.AppKey("steplog_pool", asyncpg.Pool)
REDIS = web.AppKey("steplog_redis", Redis)
SETTINGS = web.AppKey("steplog_settings", Settings)
METRICS = web.AppKey("steplog_http_metrics", HttpMetrics)
