"""Sliding-window rate limits per tenant and route, on PostgreSQL and on Redis; 429 + Retry-After."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections import deque

import httpx
import psycopg
import pytest
from tests.governance.conftest import audit_rows

from somastack import Client
from somastack.governance.ratelimit import (
    Limit,
    LocalRateLimiter,
    PostgresRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    build,
    limit_for,
)
from somastack.store import Database

REDIS_URL = os.environ.get("SOMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_limit_for_reads_tenant_limits() -> None:
    default = Limit(100, 60)
    assert limit_for({}, "POST /v1/x", default) == default
    limits = {"rate": {"limit": 5, "window_s": 10, "routes": {"POST /v1/x": 2}}}
    assert limit_for(limits, "POST /v1/x", default) == Limit(2, 10)
    assert limit_for(limits, "GET /v1/y", default) == Limit(5, 10)


async def exercise(limiter: RateLimiter) -> None:
    bucket, limit = f"t|{uuid.uuid4().hex}", Limit(3, 2)
    assert [await limiter.hit(bucket, limit) for _ in range(3)] == [None, None, None]
    wait = await limiter.hit(bucket, limit)
    assert wait is not None and 1 <= wait <= 2
    assert await limiter.hit(f"{bucket}-other", limit) is None  # buckets are independent
    await asyncio.sleep(2.1)  # the window slides: the first hits have left it
    assert await limiter.hit(bucket, limit) is None


@pytest.mark.asyncio
async def test_postgres_sliding_window(fresh_db: Database) -> None:
    await exercise(PostgresRateLimiter(fresh_db))


@pytest.mark.asyncio
async def test_in_process_sliding_window() -> None:
    await exercise(LocalRateLimiter())


@pytest.mark.asyncio
async def test_in_process_wait_counts_from_the_hit_that_must_leave() -> None:
    limiter, limit = LocalRateLimiter(), Limit(2, 3)
    assert await limiter.hit("b", limit) is None
    await asyncio.sleep(1.1)
    assert await limiter.hit("b", limit) is None
    assert await limiter.hit("b", limit) == 2  # the first hit leaves the window in ~1.9 s
    assert await limiter.hit("b", Limit(1, 3)) == 3  # a lower limit: the newest must leave (~3 s)


@pytest.mark.asyncio
async def test_the_store_follows_the_deployment(fresh_db: Database) -> None:
    """Redis when configured; in process only for the sole server of an embedded database."""
    assert isinstance(build(fresh_db, None), PostgresRateLimiter)  # external: other replicas may exist
    assert isinstance(build(dataclasses.replace(fresh_db, embedded=True), None), LocalRateLimiter)
    redis_limiter = build(fresh_db, REDIS_URL)
    assert isinstance(redis_limiter, RedisRateLimiter)
    await redis_limiter.close()


@pytest.mark.asyncio
async def test_redis_sliding_window() -> None:
    limiter = RedisRateLimiter(REDIS_URL, prefix=f"soma-test:{uuid.uuid4().hex}:")
    try:
        await limiter.client.ping()
    except OSError as exc:
        await limiter.close()
        pytest.fail(f"Redis is not running at {REDIS_URL} (run `make services`): {exc}")
    try:
        await exercise(limiter)
    finally:
        await limiter.close()


@pytest.mark.asyncio
async def test_concurrent_hits_never_exceed_the_limit(fresh_db: Database) -> None:
    for limiter in (PostgresRateLimiter(fresh_db), LocalRateLimiter()):
        bucket = f"c|{uuid.uuid4().hex}"
        results = await asyncio.gather(*(limiter.hit(bucket, Limit(5, 60)) for _ in range(12)))
        assert sum(r is None for r in results) == 5


def test_flood_over_the_limit_gets_429_with_retry_after(server: str, admin: Client,
                                                        db: psycopg.Connection) -> None:
    tenant = f"rl-{uuid.uuid4().hex[:8]}"
    admin.request("POST", "/v1/tenants", json={"id": tenant, "limits": {"rate": {
        "limit": 1000, "window_s": 30, "routes": {"POST /v1/memory/recall": 4}}}})
    key = admin.request("POST", f"/v1/tenants/{tenant}/keys",
                        json={"name": "k", "scopes": ["memory:read"]})["key"]
    statuses, retry = [], None
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {key}"}) as http:
        for _ in range(7):
            resp = http.post("/v1/memory/recall", json={"query": "flood"})
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                retry = int(resp.headers["retry-after"])
                assert resp.json()["type"].endswith("rate-limited")
        assert http.get("/v1/memory").status_code == 200  # another route has its own window
    assert statuses == [200] * 4 + [429] * 3 and retry is not None and 1 <= retry <= 30
    assert [r[1] for r in audit_rows(db, tenant_id=tenant, action="rate.deny")] == ["deny"] * 3
    with Client(server, api_key=admin.http.headers["authorization"].split()[1]) as same_route:
        assert same_route.recall("other tenants are not limited by it")["evidence"] is not None


@pytest.mark.asyncio
async def test_purge_drops_hits_older_than_any_window(fresh_db: Database, fresh_url: str) -> None:
    limiter = PostgresRateLimiter(fresh_db)
    await limiter.hit("recent", Limit(10, 60))
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("INSERT INTO rate_hits (bucket, at) VALUES ('stale', now() - interval '2 days')")
    assert await limiter.purge() == 1
    with psycopg.connect(fresh_url) as conn:
        assert conn.execute("SELECT bucket FROM rate_hits").fetchall() == [("recent",)]


@pytest.mark.asyncio
async def test_in_process_purge_forgets_idle_buckets() -> None:
    limiter = LocalRateLimiter()
    await limiter.hit("recent", Limit(10, 60))
    limiter.hits["stale"] = deque([time.monotonic() - 2 * 24 * 3600])  # a hit two days old
    assert await limiter.purge() == 1 and list(limiter.hits) == ["recent"]
