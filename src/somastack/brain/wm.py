"""Working memory per session: a small, bounded, recency-weighted set of items.

Recalled memories and new items are admitted; an item whose vector is a near-copy of one
already held (cosine > `dedupe`) refreshes that item instead of taking a slot. When the session
holds more than `capacity` items, the one with the lowest keep score goes:

    keep_i = recency_i + novelty_i,   recency_i = 2^(−age_i/h),   novelty_i = 1 − max_{j≠i} cos(v_i, v_j)

with age since the item was last seen and half-life h: stale items that say what others already
say leave first. Items are listed by their recency weight. The policy is one pure function
(`admit_items`); the two backends, Redis (when SOMA_REDIS_URL is set) and PostgreSQL, only store
its result, each under a per-session lock, so both behave identically.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import psycopg
import redis.asyncio as aioredis
from psycopg.rows import dict_row
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.exceptions import WatchError

from somastack.config import Settings
from somastack.errors import Conflict, StoreUnavailable
from somastack.store import Database


@dataclass(frozen=True)
class WMItem:
    key: str  # the memory id, or a content hash for an item that is not a stored memory
    content: str
    vector: np.ndarray
    source: str  # recalled | new
    memory_id: str | None = None
    hits: int = 1
    admitted_at: float = 0.0  # epoch seconds
    seen_at: float = 0.0


@dataclass(frozen=True)
class WMPolicy:
    capacity: int = 16
    dedupe: float = 0.95
    half_life_s: float = 900.0
    ttl_s: int = 24 * 3600

    @classmethod
    def from_settings(cls, s: Settings) -> WMPolicy:
        return cls(s.wm_capacity, s.wm_dedupe_cosine, s.wm_half_life_s, s.wm_ttl_s)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def recency_weights(items: list[WMItem], now: float, half_life_s: float) -> np.ndarray:
    """2^(−(now − seen_at)/h) per item, in (0, 1]."""
    ages = np.array([max(now - it.seen_at, 0.0) for it in items])
    return np.power(2.0, -ages / half_life_s)


def keep_scores(items: list[WMItem], now: float, half_life_s: float) -> np.ndarray:
    """recency + novelty per item (see the module docstring); a lone item has novelty 1."""
    if not items:
        return np.zeros(0)
    v = _unit(np.stack([it.vector for it in items]))
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    novelty = 1.0 - np.clip(sims.max(axis=1), 0.0, 1.0) if len(items) > 1 else np.ones(1)
    return recency_weights(items, now, half_life_s) + novelty


def admit_items(current: list[WMItem], incoming: list[WMItem], policy: WMPolicy, now: float
                ) -> list[WMItem]:
    """The session's items after admitting `incoming` (dedupe, refresh, then evict to capacity)."""
    held = [it for it in current if now - it.seen_at <= policy.ttl_s]
    for new in incoming:
        vec = new.vector / max(float(np.linalg.norm(new.vector)), 1e-12)
        match = None
        for i, it in enumerate(held):
            same = it.key == new.key
            if same or float(_unit(it.vector[None, :])[0] @ vec) > policy.dedupe:
                match = i
                break
        if match is None:
            held.append(replace(new, hits=1, admitted_at=now, seen_at=now))
            continue
        old = held[match]
        held[match] = replace(old, hits=old.hits + 1, seen_at=now,
                              memory_id=old.memory_id or new.memory_id,
                              source="recalled" if "recalled" in (old.source, new.source) else old.source)
    while len(held) > policy.capacity:
        scores = keep_scores(held, now, policy.half_life_s)
        held.pop(int(np.argmin(scores)))
    return held


def ranked(items: list[WMItem], policy: WMPolicy, now: float) -> list[tuple[WMItem, float]]:
    """Items with their recency weight, most recent first."""
    if not items:
        return []
    weights = recency_weights(items, now, policy.half_life_s)
    order = np.argsort(-weights, kind="stable")
    return [(items[i], float(weights[i])) for i in order]


class WorkingMemoryStore(Protocol):
    policy: WMPolicy

    async def admit(self, tenant: str, session: str, items: list[WMItem]) -> list[WMItem]:
        """Admit items into the session; returns what the session holds afterwards."""
        ...

    async def items(self, tenant: str, session: str) -> list[WMItem]: ...

    async def clear(self, tenant: str, session: str) -> None: ...

    async def close(self) -> None: ...


class PostgresWorkingMemory:
    """Working memory in the working_memory table; a transaction-scoped advisory lock per session."""

    def __init__(self, db: Database, policy: WMPolicy) -> None:
        self.db, self.policy = db, policy

    async def _load(self, conn: psycopg.AsyncConnection[Any], tenant: str, session: str) -> list[WMItem]:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT item_key, memory_id, content, vector, source, hits, "
            "extract(epoch FROM admitted_at) AS admitted, extract(epoch FROM seen_at) AS seen "
            "FROM working_memory WHERE tenant_id = %s AND session_id = %s ORDER BY admitted_at",
            (tenant, session))
        return [WMItem(r["item_key"], r["content"], np.asarray(r["vector"], dtype=np.float32),
                       r["source"], str(r["memory_id"]) if r["memory_id"] else None, r["hits"],
                       float(r["admitted"]), float(r["seen"])) for r in await cur.fetchall()]

    async def admit(self, tenant: str, session: str, items: list[WMItem]) -> list[WMItem]:
        async with self.db.tenant(tenant) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))",
                               (f"wm|{tenant}|{session}",))
            now = time.time()
            held = admit_items(await self._load(conn, tenant, session), items, self.policy, now)
            await conn.execute("DELETE FROM working_memory WHERE tenant_id = %s AND session_id = %s",
                               (tenant, session))
            if held:
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO working_memory (tenant_id, session_id, item_key, memory_id, content, "
                        "vector, source, hits, admitted_at, seen_at) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s))",
                        [(tenant, session, it.key, it.memory_id, it.content,
                          [float(x) for x in it.vector], it.source, it.hits, it.admitted_at, it.seen_at)
                         for it in held])
        return held

    async def items(self, tenant: str, session: str) -> list[WMItem]:
        async with self.db.tenant(tenant) as conn:
            held = await self._load(conn, tenant, session)
        now = time.time()
        return [it for it in held if now - it.seen_at <= self.policy.ttl_s]

    async def clear(self, tenant: str, session: str) -> None:
        async with self.db.tenant(tenant) as conn:
            await conn.execute("DELETE FROM working_memory WHERE tenant_id = %s AND session_id = %s",
                               (tenant, session))

    async def close(self) -> None:
        return None


def _encode(items: list[WMItem]) -> str:
    return json.dumps([{
        "key": it.key, "content": it.content, "source": it.source, "memory_id": it.memory_id,
        "hits": it.hits, "admitted_at": it.admitted_at, "seen_at": it.seen_at,
        "vector": base64.b64encode(np.asarray(it.vector, dtype="<f4").tobytes()).decode(),
    } for it in items])


def _decode(raw: bytes | str | None) -> list[WMItem]:
    if not raw:
        return []
    return [WMItem(d["key"], d["content"],
                   np.frombuffer(base64.b64decode(d["vector"]), dtype="<f4").copy(), d["source"],
                   d["memory_id"], d["hits"], d["admitted_at"], d["seen_at"]) for d in json.loads(raw)]


class RedisWorkingMemory:
    """Working memory in one Redis key per session (JSON, expiring after ttl_s idle), updated with
    an optimistic WATCH/MULTI transaction so concurrent admissions never lose each other's items."""

    RETRIES = 20

    def __init__(self, url: str, policy: WMPolicy, prefix: str = "soma:wm:") -> None:
        self.client = aioredis.from_url(url)
        self.policy, self.prefix = policy, prefix

    def _key(self, tenant: str, session: str) -> str:
        return f"{self.prefix}{tenant}:{session}"

    async def admit(self, tenant: str, session: str, items: list[WMItem]) -> list[WMItem]:
        key = self._key(tenant, session)
        for _ in range(self.RETRIES):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    held = admit_items(_decode(await pipe.get(key)), items, self.policy, time.time())
                    pipe.multi()
                    pipe.set(key, _encode(held), ex=self.policy.ttl_s)
                    await pipe.execute()
                    return held
                except WatchError:
                    continue
                except (RedisConnectionError, RedisTimeout) as exc:
                    raise StoreUnavailable(f"working memory (Redis) unavailable: {exc}") from exc
        raise Conflict("working memory kept changing under concurrent writers; retry",
                       field="session_id")

    async def items(self, tenant: str, session: str) -> list[WMItem]:
        try:
            return _decode(await self.client.get(self._key(tenant, session)))
        except (RedisConnectionError, RedisTimeout) as exc:
            raise StoreUnavailable(f"working memory (Redis) unavailable: {exc}") from exc

    async def clear(self, tenant: str, session: str) -> None:
        await self.client.delete(self._key(tenant, session))

    async def close(self) -> None:
        await self.client.aclose()


def open_working_memory(settings: Settings, db: Database) -> WorkingMemoryStore:
    """Redis when SOMA_REDIS_URL is set, else PostgreSQL."""
    policy = WMPolicy.from_settings(settings)
    if settings.redis_url:
        return RedisWorkingMemory(settings.redis_url, policy)
    return PostgresWorkingMemory(db, policy)
