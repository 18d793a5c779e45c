"""HTTP metrics: request counts and latency by method, route template and status.

Each application owns its `CollectorRegistry`, so several apps (tests) never
collide on metric names; `/metrics` renders it together with the process-wide
default registry, where the engine's own collectors live.
"""

from __future__ import annotations

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "steplog_http_requests",
            "HTTP requests served, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "steplog_http_request_duration_seconds",
            "HTTP request latency in seconds, by method and route template.",
            ("method", "route"),
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

        self.projection_lag = Gauge(
            "steplog_projection_lag_events",
            "Committed events a projection has not applied yet, by projection.",
            ("projection",),
            registry=self.registry,
        )
        self.projection_behind = Gauge(
            "steplog_projection_behind_seconds",
            "Age of the oldest event a projection has not applied yet (0 when current).",
            ("projection",),
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> web.Response:
        body = prometheus_client.generate_latest(self.registry) + prometheus_client.generate_latest(
            prometheus_client.REGISTRY
        )
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )


def route_label(request: web.Request) -> str:
    """The route template ("/v1/executions/{execution_id}"), never the raw path,
    so label cardinality stays bounded; "unmatched" for unknown routes."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
