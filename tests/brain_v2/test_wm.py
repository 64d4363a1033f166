"""Working memory: the policy, and the same behaviour on the Redis and PostgreSQL backends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from tests.brain_v2.conftest import REDIS_URL

from somastack.brain.context import new_item
from somastack.brain.embed import MiniLMEmbedder
from somastack.brain.wm import (
    PostgresWorkingMemory,
    RedisWorkingMemory,
    WMItem,
    WMPolicy,
    WorkingMemoryStore,
    admit_items,
    keep_scores,
    ranked,
)
from somastack.errors import StoreUnavailable
from somastack.store import Database

POLICY = WMPolicy(capacity=4, dedupe=0.95, half_life_s=60.0, ttl_s=3600)


def item(key: str, vec: np.ndarray, seen: float = 0.0) -> WMItem:
    return WMItem(key, f"content {key}", vec, "new", seen_at=seen, admitted_at=seen)


def basis(i: int, d: int = 8) -> np.ndarray:
    return np.eye(d)[i]


@given(st.lists(st.integers(0, 7), min_size=1, max_size=30), st.integers(1, 6))
def test_admission_is_bounded_and_without_near_copies(keys: list[int], capacity: int) -> None:
    policy = WMPolicy(capacity=capacity, half_life_s=60.0)
    held: list[WMItem] = []
    for t, k in enumerate(keys):
        held = admit_items(held, [item(f"k{k}", basis(k))], policy, now=float(t))
        assert len(held) <= capacity
        v = np.stack([h.vector for h in held])
        sims = v @ v.T - np.eye(len(held)) * 2
        assert sims.max() <= policy.dedupe
    assert held[-1].key == f"k{keys[-1]}" or any(h.key == f"k{keys[-1]}" for h in held)


def test_eviction_prefers_old_redundant_items() -> None:
    near = basis(0) + 0.5 * basis(1)
    held = [item("old-dup", near / np.linalg.norm(near), seen=0.0), item("a", basis(0), seen=0.0),
            item("fresh", basis(2), seen=100.0), item("b", basis(3), seen=100.0)]
    scores = keep_scores(held, 100.0, 60.0)
    assert np.argmin(scores) in (0, 1)  # old and redundant with each other
    after = admit_items(held, [item("new", basis(4))], POLICY, now=100.0)
    assert {h.key for h in after} >= {"fresh", "b", "new"} and len(after) == 4


def test_recency_ranks_the_latest_first() -> None:
    held = [item("a", basis(0), seen=0.0), item("b", basis(1), seen=50.0)]
    out = ranked(held, POLICY, now=60.0)
    assert [it.key for it, _ in out] == ["b", "a"] and 0 < out[1][1] < out[0][1] <= 1


@pytest_asyncio.fixture(params=["redis", "postgres"])
async def store(request: pytest.FixtureRequest, adb: Database) -> AsyncIterator[WorkingMemoryStore]:
    if request.param == "redis":
        redis_store = RedisWorkingMemory(REDIS_URL, POLICY, prefix=f"soma-test:{uuid.uuid4().hex}:")
        try:
            await redis_store.client.ping()
        except OSError as exc:
            await redis_store.close()
            pytest.fail(f"Redis is not running at {REDIS_URL} (run `make services`): {exc}")
        yield redis_store
        await redis_store.close()
    else:
        yield PostgresWorkingMemory(adb, POLICY)


@pytest.mark.asyncio
async def test_backend_dedupes_bounds_and_isolates(store: WorkingMemoryStore, minilm: MiniLMEmbedder
                                                   ) -> None:
    tenant, other, session = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}", "s1"
    texts = ["Ada prefers green tea in the morning.", "Ada prefers green tea in the morning",
             "The deploy pipeline runs on Fridays.", "Bob is allergic to peanuts.",
             "The office moves to Lyon in May.", "Quarterly taxes are due in April.",
             "The cat's name is Turing."]
    vecs = minilm.embed(texts)
    assert float(vecs[0] @ vecs[1]) > 0.95  # a real near-copy under the real embedder
    held = await store.admit(tenant, session, [new_item(texts[0], vecs[0])])
    held = await store.admit(tenant, session, [new_item(texts[1], vecs[1])])
    assert len(held) == 1 and held[0].hits == 2
    for t, v in zip(texts[2:], vecs[2:], strict=True):
        await store.admit(tenant, session, [new_item(t, v)])
    got = await store.items(tenant, session)
    assert len(got) == POLICY.capacity and texts[6] in {g.content for g in got}
    assert np.allclose(got[0].vector, [g for g in got if g.content == got[0].content][0].vector)
    assert await store.items(other, session) == [] and await store.items(tenant, "s2") == []
    await store.clear(tenant, session)
    assert await store.items(tenant, session) == []


@pytest.mark.asyncio
async def test_backend_keeps_every_concurrent_admission(store: WorkingMemoryStore) -> None:
    tenant, session = f"t-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:6]}"
    await asyncio.gather(*(store.admit(tenant, session, [item(f"k{i}", basis(i))]) for i in range(4)))
    got = await store.items(tenant, session)
    assert sorted(g.key for g in got) == ["k0", "k1", "k2", "k3"]
    assert all(time.time() - g.seen_at < 60 for g in got)


@pytest.mark.asyncio
async def test_unreachable_redis_is_a_store_unavailable_error() -> None:
    dead = RedisWorkingMemory("redis://127.0.0.1:1/0", POLICY)
    try:
        with pytest.raises(StoreUnavailable):
            await dead.items("t", "s")
        with pytest.raises(StoreUnavailable):
            await dead.admit("t", "s", [item("a", basis(0))])
    finally:
        await dead.close()
