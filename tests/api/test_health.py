"""Liveness, readiness and metrics."""

from __future__ import annotations

import sys

import httpx
import pytest

from somastack import Client
from somastack.config import Settings


def test_health_ready_and_metrics(client: Client, server: str, admin_key: str) -> None:
    http = client.http
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["migrations"] == "ok"
    client.remember("metrics are measured", namespace="m")
    client.recall("metrics", namespace="m")
    # the figures are the whole server's: a tenant's own key (even its admin's) is refused
    refused = http.get("/metrics")
    assert refused.status_code == 403 and refused.headers["content-type"].startswith(
        "application/problem+json")
    assert httpx.get(f"{server}/metrics").status_code == 401
    text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {admin_key}"}).text
    recall_buckets = [ln for ln in text.splitlines()
                      if ln.startswith("soma_http_request_duration_seconds_bucket")
                      and 'route="/v1/memory/recall"' in ln and 'status="200"' in ln]
    assert recall_buckets, "recall latency is labelled by its route template"
    assert "soma_recall_duration_seconds_count" in text
    stored = [ln for ln in text.splitlines() if ln.startswith("soma_memories_stored ")]
    assert stored and float(stored[0].split()[1]) >= 1


def test_openapi_is_published(client: Client) -> None:
    spec = client.http.get("/openapi.json").json()
    assert "/v1/memory/recall" in spec["paths"] and "/v1/memory/{id}" in spec["paths"]


def test_the_server_sets_its_thread_switch_interval(client: Client, settings: Settings) -> None:
    """The server (in this process) hands the GIL over every gil_switch_ms, not every 5 ms."""
    assert client.http.get("/healthz").status_code == 200
    assert sys.getswitchinterval() == pytest.approx(settings.gil_switch_ms / 1000)
    assert settings.gil_switch_ms < 5
