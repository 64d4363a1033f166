"""The lexical list is the exact BM25 top n, term frequencies included, although most matches are
only ranked by their tf = 1 lower bound (candidates.held_sql) before the best 2n are scored."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import psycopg
import pytest

from somastack.brain import candidates as cand
from somastack.brain.embed import AsyncEmbedder, MiniLMEmbedder
from somastack.brain.memory import remember
from somastack.brain.model import MemoryDraft, RecallQuery
from somastack.config import Settings
from somastack.store import Database
from somastack.store.oneshot import pipelined

N = 10  # list size: 2n = 20 memories get their exact score
WORDS = "apple river stone cloud maple amber cedar harbor lantern meadow".split()


def exact_bm25(db: psycopg.Connection, tenant: str, query: str) -> dict[str, float]:
    """BM25 of every memory of the tenant's namespace, from its tsvector read back (positions
    included), with df, N and avgdl counted here rather than read from the lexicon."""
    rows = db.execute(
        "SELECT id::text, (SELECT array_agg(lexeme || ':' || cardinality(positions)) "
        "FROM unnest(tsv)) AS terms FROM memories WHERE tenant_id = %s", (tenant,)).fetchall()
    q = {r[0] for r in db.execute(
        "SELECT unnest(tsvector_to_array(to_tsvector('english', %s)))", (query,)).fetchall()}
    docs = {i: dict((t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in terms)
            for i, terms in rows}
    n, avgdl = len(docs), sum(len(d) for d in docs.values()) / len(docs)
    df = {t: sum(t in d for d in docs.values()) for t in q}
    out = {}
    for i, d in docs.items():
        held = [t for t in q if t in d]
        if held:
            out[i] = sum(math.log1p((n - df[t] + 0.5) / (df[t] + 0.5)) * d[t] * 2.2
                         / (d[t] + 1.2 * (1 - 0.75 + 0.75 * len(d) / avgdl)) for t in held)
    return out


@pytest.mark.asyncio
async def test_the_lexical_list_is_the_exact_top_n_with_term_frequencies(
        settings: Settings, database_url: str) -> None:
    db = await Database.open(settings.model_copy(update={"pool_min": 1, "pool_max": 2}))
    embedder = AsyncEmbedder(MiniLMEmbedder())
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    rng = np.random.default_rng(3)
    # 60 memories mention tea once, among 1-9 other words (so their lengths, and scores,
    # differ); 4 say it three times beside one other word: by the tf = 1 bound they tie with the
    # shortest, by BM25 they come first. 20 more never mention it.
    texts = [" ".join(["tea", *rng.choice(WORDS, size=1 + i % 9, replace=False)]) for i in range(60)]
    texts += [f"tea tea tea {w}" for w in WORDS[:4]]
    texts += [" ".join(rng.choice(WORDS, size=5, replace=False)) + f" {i}" for i in range(20)]
    try:
        await remember(db, embedder, tenant, [MemoryDraft(namespace="n", content=t) for t in texts],
                       max_bytes=32 * 1024)
        q = RecallQuery(text="tea", namespace="n", top_k=N)
        qvec = (await embedder.embed([q.text]))[0]
        async with pipelined(db, tenant, rls=False) as conn:
            plan, speakers = await cand.query_context(conn, tenant, "n", q.text)
            sent = await cand.send(conn, tenant, q, qvec, plan, embedder.id, N)
        c = await cand.unpack(sent, qvec, speakers)
    finally:
        embedder.close()
        await db.close()

    with psycopg.connect(database_url, autocommit=True) as conn:
        want = exact_bm25(conn, tenant, q.text)
    got: dict[str, Any] = {str(r["id"]): (r["lexical_rank"], b) for r, b in zip(c.rows, c.bm25, strict=True)
                           if r["lexical_rank"] is not None}
    top = sorted(want, key=lambda i: (-want[i], i))[:N]
    assert sorted(got, key=lambda i: got[i][0]) == top
    for i in top:
        assert got[i][1] == pytest.approx(want[i], rel=1e-12)
    repeated = {str(r["id"]) for r in c.rows if r["content"].count("tea") == 3}
    assert len(repeated) == 4 and set(top[:4]) == repeated
