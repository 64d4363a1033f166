"""Sliding-window rate limits per tenant and route, counted where every API process sees them.

Every limiter keeps a log of hit times per bucket over the last `window_s` seconds; a hit is
admitted when fewer than `limit` are in the window, and a refusal says when the oldest hit
leaves it. Where the log lives (see `build`):
- Redis when configured: shared by every worker and replica, one round trip per hit.
- In process when this process is the only API server of an embedded database (one worker):
  no round trip at all; the log is exact because no other process admits requests.
- PostgreSQL otherwise (several workers or an external database, without Redis): shared, at the
  cost of a few round trips per hit; configure Redis for high request rates.
"""

from __future__ import annotations

import math
import multiprocessing
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg.rows import dict_row

from somastack.store import Database

_REDIS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + window - now)
"""


MAX_WINDOW_S = 24 * 3600


@dataclass(frozen=True)
class Limit:
    limit: int
    window_s: int


def check_limits(limits: dict[str, Any]) -> None:
    """ValueError naming the bad part of a tenant's limits.rate (positive integers only)."""
    rate = limits.get("rate")
    if rate is None:
        return
    if not isinstance(rate, dict) or set(rate) - {"limit", "window_s", "routes"}:
        raise ValueError("rate: expected {limit, window_s, routes}")
    routes = rate.get("routes", {})
    if not isinstance(routes, dict):
        raise ValueError("rate.routes: expected {\"METHOD /path\": limit}")
    values = {"rate.limit": rate.get("limit", 1), "rate.window_s": rate.get("window_s", 1),
              **{f"rate.routes[{k!r}]": v for k, v in routes.items()}}
    for where, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: must be a positive integer")
    if rate.get("window_s", 1) > MAX_WINDOW_S:
        raise ValueError(f"rate.window_s: at most {MAX_WINDOW_S} seconds")


def limit_for(tenant_limits: dict[str, Any], route: str, default: Limit) -> Limit:
    """The tenant's limit for this route: limits.rate.routes[route], else limits.rate, else default."""
    rate = tenant_limits.get("rate") if isinstance(tenant_limits, dict) else None
    if not isinstance(rate, dict):
        return default
    window = rate.get("window_s", default.window_s)
    limit = (rate.get("routes") or {}).get(route, rate.get("limit", default.limit))
    if not isinstance(window, int) or not isinstance(limit, int):
        return default  # stored before validation existed: fall back rather than fail
    return Limit(limit, window)


class RateLimiter(Protocol):
    async def hit(self, bucket: str, limit: Limit) -> int | None:
        """None when admitted; else the whole seconds until a hit would be admitted."""

    async def purge(self) -> int:
        """Forget hits no window can still count; returns how many."""

    async def close(self) -> None: ...


class LocalRateLimiter:
    """The window log in this process's memory: exact for a single API process, and free."""

    def __init__(self) -> None:
        self.hits: dict[str, deque[float]] = {}

    async def hit(self, bucket: str, limit: Limit) -> int | None:
        now = time.monotonic()
        log = self.hits.setdefault(bucket, deque())
        while log and log[0] <= now - limit.window_s:
            log.popleft()
        if len(log) < limit.limit:
            log.append(now)
            return None
        return max(1, math.ceil(log[-limit.limit] + limit.window_s - now))

    async def purge(self) -> int:
        """Drop the buckets whose newest hit no window can still count."""
        now = time.monotonic()
        stale = [b for b, log in self.hits.items() if not log or log[-1] < now - MAX_WINDOW_S]
        for bucket in stale:
            del self.hits[bucket]
        return len(stale)

    async def close(self) -> None:
        return None


class PostgresRateLimiter:
    """The window log in the UNLOGGED table rate_hits, one bucket locked at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def hit(self, bucket: str, limit: Limit) -> int | None:
        async with self.db.system() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (bucket,))
            await conn.execute(
                "DELETE FROM rate_hits WHERE bucket = %s AND at <= now() - make_interval(secs => %s)",
                (bucket, limit.window_s))
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT count(*) AS n, extract(epoch FROM min(at) + make_interval(secs => %s) - now()) "
                "AS wait FROM rate_hits WHERE bucket = %s", (limit.window_s, bucket))
            row = await cur.fetchone()
            assert row is not None
            if row["n"] < limit.limit:
                await conn.execute("INSERT INTO rate_hits (bucket, at) VALUES (%s, now())", (bucket,))
                return None
            return max(1, math.ceil(float(row["wait"] or limit.window_s)))

    async def purge(self) -> int:
        """Drop hits older than the longest window (buckets nobody hits any more keep none)."""
        async with self.db.system() as conn:
            cur = await conn.execute("DELETE FROM rate_hits WHERE at < now() - make_interval(secs => %s)",
                                     (MAX_WINDOW_S,))
            return cur.rowcount

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    """The window log in a Redis sorted set per bucket, updated by one atomic script."""

    def __init__(self, url: str, prefix: str = "soma:rate:") -> None:
        import redis.asyncio as redis

        self.client = redis.from_url(url)
        self.prefix = prefix
        self.script = self.client.register_script(_REDIS_SCRIPT)

    async def hit(self, bucket: str, limit: Limit) -> int | None:
        wait = float(await self.script(keys=[self.prefix + bucket],
                                       args=[limit.window_s, limit.limit, uuid.uuid4().hex]))
        return None if wait <= 0 else max(1, math.ceil(wait))

    async def purge(self) -> int:
        return 0  # keys expire by themselves (PEXPIRE)

    async def close(self) -> None:
        await self.client.aclose()


def sole_api_process(db: Database) -> bool:
    """True when no other process can admit requests against this database: an embedded one
    (private to this machine's home) served by a single process (not a uvicorn worker)."""
    return db.embedded and multiprocessing.parent_process() is None


def build(db: Database, redis_url: str | None) -> RateLimiter:
    """Redis when configured, else in process when this is the sole API process, else PostgreSQL."""
    if redis_url:
        return RedisRateLimiter(redis_url)
    return LocalRateLimiter() if sole_api_process(db) else PostgresRateLimiter(db)
