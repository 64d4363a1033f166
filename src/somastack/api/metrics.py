"""Prometheus metrics: request latency by route template, memories stored, recall latency."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "soma_http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route", "status"], buckets=BUCKETS, registry=self.registry,
        )
        self.recall = Histogram(
            "soma_recall_duration_seconds", "recall latency inside the service (embed included)",
            buckets=BUCKETS, registry=self.registry,
        )
        self.memories = Gauge(
            "soma_memories_stored", "live memories stored, all tenants", registry=self.registry
        )


class LatencyMiddleware:
    """Times every HTTP request and labels it with the matched route's path template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
