"""Baseline retrievers computed on the same turns and embeddings: dense cosine, BM25, and RRF."""

from __future__ import annotations

import bm25s
import numpy as np


def dense_rank(doc_vecs: np.ndarray, query_vecs: np.ndarray, k: int) -> np.ndarray:
    """Top-k document indices per query by cosine (vectors are unit norm)."""
    sims = query_vecs @ doc_vecs.T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def bm25_rank(docs: list[str], queries: list[str], k: int) -> np.ndarray:
    """Top-k document indices per query by BM25 (bm25s, English stop words)."""
    index = bm25s.BM25()
    index.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
    k = min(k, len(docs))
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for i, q in enumerate(queries):
        tokens = bm25s.tokenize([q], stopwords="en", show_progress=False)
        if not tokens.vocab:
            continue
        results, scores = index.retrieve(tokens, k=k, show_progress=False)
        hits = results[0][scores[0] > 0]
        out[i, : len(hits)] = hits
    return out


def rrf_rank(*rankings: np.ndarray, k: int, c: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion Σ 1/(c + rank) of several top lists; top-k per query."""
    n_queries = rankings[0].shape[0]
    out = np.full((n_queries, k), -1, dtype=np.int64)
    for q in range(n_queries):
        score: dict[int, float] = {}
        for r in rankings:
            for rank, doc in enumerate(r[q]):
                if doc >= 0:
                    score[int(doc)] = score.get(int(doc), 0.0) + 1.0 / (c + rank + 1)
        best = sorted(score, key=lambda d: -score[d])[:k]
        out[q, : len(best)] = best
    return out
