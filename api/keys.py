"""Typed application keys: how handlers reach what `create_app` was given. The
API never closes what these point at; their owner (steplog/) does."""

from __future__ import annotations

from aiohttp import web

from api.config import ApiConfig
from api.metrics import HttpMetrics
from engine.access import Access
from engine.service import EngineService
from engine.tasks import Tasks
from engine.webhooks import Webhooks
from projections.queries import Queries

COMMANDS = web.AppKey("steplog_commands", EngineService)
QUERIES = web.AppKey("steplog_queries", Queries)
CONFIG = web.AppKey("steplog_api_config", ApiConfig)
METRICS = web.AppKey("steplog_http_metrics", HttpMetrics)
ACCESS = web.AppKey("steplog_access", Access)
WEBHOOKS = web.AppKey("steplog_webhooks", Webhooks)
# Task callbacks and activities (absent: those routes answer 503).
TASKS = web.AppKey("steplog_tasks", Tasks)
