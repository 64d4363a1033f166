"""Recall's candidate query waits for a turn (`Database.heavy`) when `heavy_queries` are running,
and reports the wait as `timings_ms.admit`; the turn is given back on success and on failure."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from somastack.brain import recall
from somastack.brain.embed import AsyncEmbedder, MiniLMEmbedder
from somastack.brain.memory import remember
from somastack.brain.model import MemoryDraft, RecallQuery
from somastack.config import Settings
from somastack.errors import InvalidInput
from somastack.store import Database


@pytest.mark.asyncio
async def test_candidate_queries_wait_for_a_turn_and_always_give_it_back(
        settings: Settings, database_url: str) -> None:
    db = await Database.open(settings.model_copy(update={"pool_min": 1, "pool_max": 4,
                                                        "heavy_queries": 2}))
    embedder = AsyncEmbedder(MiniLMEmbedder())
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    try:
        await remember(db, embedder, tenant, [MemoryDraft(namespace="n", content="Ada keeps bees.")],
                       max_bytes=32 * 1024)
        q = RecallQuery(text="who keeps bees", namespace="n", top_k=1)
        for _ in range(2):  # every turn taken
            await db.heavy.acquire()
        waiting = asyncio.ensure_future(recall.recall(db, embedder, tenant, q))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # embedded and planned, now waiting for a turn
        db.heavy.release()
        found = await asyncio.wait_for(waiting, 30)
        assert found.evidence[0].memory["content"] == "Ada keeps bees."
        assert found.timings_ms["admit"] >= 400
        db.heavy.release()

        with pytest.raises(InvalidInput):  # a failing recall (before admission) holds nothing
            await recall.recall(db, embedder, tenant, RecallQuery(text="x", ablate=["nope"]))
        results = await asyncio.gather(*(recall.recall(db, embedder, tenant, q) for _ in range(6)))
        assert all(r.evidence for r in results)
        assert db.heavy._value == 2  # every turn given back
    finally:
        embedder.close()
        await db.close()
