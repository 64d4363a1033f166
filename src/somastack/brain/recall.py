"""Hybrid recall: candidates → features → weighted fusion → diffusion → top k.

Candidates come from pgvector ANN on the memories' own vectors and on their context vectors
(each memory embedded with its chain neighbours), BM25 full text, and the chain neighbours of all
of those (see candidates.py). Features are computed over the candidate set; the fused score is
Σ_f θ_f·x_f, then heat-kernel diffusion over the candidate graph adds a term of its own, so every
evidence block's score is exactly the sum of its `score_breakdown`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from somastack.brain import candidates as cand
from somastack.brain.candidates import Candidates
from somastack.brain.embed import AsyncEmbedder, l2_normalise
from somastack.brain.graph import diffuse, knn_adjacency, znorm
from somastack.brain.model import RecallQuery
from somastack.errors import InvalidInput
from somastack.store import Database
from somastack.store.oneshot import pipelined

RECENCY_HALF_LIFE_DAYS = 30.0
NAME_STRIP_MIX = 3.0  # query vector = normalise(q + 3·q_without_speaker_names)
DIFFUSION_BETA, DIFFUSION_TOP, DIFFUSION_KNN = 0.2, 50, 3
SESSION_TOP = 3

DEFAULT_WEIGHTS: dict[str, float] = {
    "dense": 1.0,
    "context": 1.0,
    "lexical": 1.0,
    "session": 0.3,
    "speaker": 1.5,
    "recency": 0.05,
    "importance": 0.05,
}
STAGES = ("diffusion", "name_strip", "neighbours")  # switchable steps that are not weighted terms


def dense_feature(c: Candidates, _: dict[str, float]) -> np.ndarray:
    """z-score of cos(query, memory vector) over the candidates."""
    return znorm(c.vectors @ c.query_vector)


def context_feature(c: Candidates, _: dict[str, float]) -> np.ndarray:
    """z-score of cos(query, context vector): the memory read together with its neighbours."""
    return znorm(c.context @ c.query_vector)


def lexical_feature(c: Candidates, _: dict[str, float]) -> np.ndarray:
    """z-score of BM25 (0 for memories without a text match)."""
    return znorm(c.bm25)


def _group(i: int, row: dict[str, Any]) -> Any:
    """The episode a memory belongs to: metadata.session if given, else its event day, else
    itself (the i-th candidate: an int hashes faster than its UUID)."""
    if row["session_key"] is not None:
        return ("s", row["session_key"])
    when = row["event_time"]
    return ("d", when.date().isoformat()) if when else i


def session_feature(c: Candidates, partial: dict[str, Any]) -> np.ndarray:
    """Mean of the top-3 partial scores among the candidates of the same episode."""
    base = partial["_score"]
    ids: dict[Any, int] = {}
    group = np.array([ids.setdefault(_group(i, r), len(ids)) for i, r in enumerate(c.rows)])
    order = np.lexsort((-base, group))  # by episode, best first within each
    ordered = group[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    top = order[rank < SESSION_TOP]
    sums = np.bincount(group[top], weights=base[top], minlength=len(ids))
    return (sums / np.bincount(group[top], minlength=len(ids)))[group]


def named_speakers(text: str, speakers: list[str]) -> list[str]:
    """Speakers whose first name appears as a word in the text."""
    low = text.lower()
    return [s for s in speakers if s.split() and
            re.search(r"\b" + re.escape(s.split()[0].lower()) + r"\b", low)]


def speaker_feature(c: Candidates, partial: dict[str, Any]) -> np.ndarray:
    """1 for memories said by the one speaker the query names (0 if it names none or several)."""
    named = partial["_named"]
    if len(named) != 1:
        return np.zeros(len(c))
    return np.array([float(r["speaker"] == named[0]) for r in c.rows])


def recency_feature(c: Candidates, _: dict[str, float]) -> np.ndarray:
    """2^(−age/h): age from the event time (else creation time), half-life h days."""
    now = datetime.now(UTC)
    ages = np.array([(now - (r["event_time"] or r["created_at"])).total_seconds() / 86400 for r in c.rows])
    return np.power(2.0, -np.maximum(ages, 0.0) / RECENCY_HALF_LIFE_DAYS)


def importance_feature(c: Candidates, _: dict[str, float]) -> np.ndarray:
    """The importance the writer gave, in [0, 1]."""
    return np.array([r["importance"] for r in c.rows], dtype=np.float64)


Feature = Callable[[Candidates, dict[str, Any]], np.ndarray]
# Order matters: session uses the score of the features before it (after diffusion).
FEATURES: dict[str, Feature] = {
    "dense": dense_feature, "context": context_feature, "lexical": lexical_feature,
    "speaker": speaker_feature, "recency": recency_feature, "importance": importance_feature,
    "session": session_feature,
}
_BASE = ("dense", "context", "lexical")


def diffusion_term(c: Candidates, score: np.ndarray) -> np.ndarray:
    """Heat-kernel diffusion over the top candidates: K = exp(−βL) on a graph of each
    candidate's 3 nearest candidates (weight max(cos, 0)) plus chain links (weight 1)."""
    out = np.zeros(len(c))
    if len(c) < 3:
        return out
    top = np.argsort(-score, kind="stable")[:DIFFUSION_TOP]
    pos = {int(t): a for a, t in enumerate(top)}
    sub = c.vectors[top]
    adj = knn_adjacency(sub @ sub.T, DIFFUSION_KNN)
    for i, j in c.chain_pairs():
        if i in pos and j in pos:
            adj[pos[i], pos[j]] = max(adj[pos[i], pos[j]], 1.0)
    out[top] = diffuse(score[top], adj, DIFFUSION_BETA) - score[top]
    return out


def score(c: Candidates, weights: dict[str, float], query: str, switches: set[str]
          ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The fused score and its terms: base features, diffusion, then the episode and boosts."""
    terms: dict[str, np.ndarray] = {}
    for name in _BASE:
        if weights.get(name):
            terms[name] = weights[name] * FEATURES[name](c, {})
    total = np.sum(list(terms.values()), axis=0) if terms else np.zeros(len(c))
    if "diffusion" not in switches:
        terms["diffusion"] = diffusion_term(c, total)
        total = total + terms["diffusion"]
    partial = {"_score": total, "_named": named_speakers(query, c.speakers)}
    for name in FEATURES:
        if name not in _BASE and weights.get(name):
            terms[name] = weights[name] * FEATURES[name](c, partial)
    return np.sum(list(terms.values()), axis=0), terms


@dataclass
class Evidence:
    memory: dict[str, Any]
    score: float
    score_breakdown: dict[str, float]
    provenance: dict[str, Any]


@dataclass
class RecallResult:
    evidence: list[Evidence]
    timings_ms: dict[str, float]
    candidates: int
    weights: dict[str, float] = field(default_factory=dict)


def _evidence(c: Candidates, i: int, total: float, terms: dict[str, float],
              include_scores: bool) -> Evidence:
    row = dict(c.rows[i])
    ranks = {k: row.pop(f"{k}_rank") for k in ("dense", "context", "lexical")}
    for k in ("prev_id", "next_id", "session_key", "speaker"):
        row.pop(k)
    row["metadata"] = json.loads(row.pop("metadata_json"))
    return Evidence(
        memory=row,
        score=round(total, 6),
        score_breakdown={k: round(v, 6) for k, v in terms.items()} if include_scores else {},
        provenance={
            "source": row["source"], "trace_id": row["trace_id"], "embedder": row["embedder"],
            "created_at": row["created_at"],
            "matched_by": [k for k, r in ranks.items() if r is not None] or ["neighbour"],
            **{f"{k}_rank": r for k, r in ranks.items()},
        },
    )


def query_vector(vecs: np.ndarray) -> np.ndarray:
    """normalise(q + m·q′) for the query q and its speaker-name-free variant q′ (if any)."""
    if len(vecs) == 1:
        return vecs[0]
    return l2_normalise((vecs[0] + NAME_STRIP_MIX * vecs[1])[None, :])[0]


def strip_names(text: str, names: list[str]) -> str:
    for name in names:
        text = re.sub(r"\b" + re.escape(name.split()[0]) + r"(?:'s)?\b", " ", text, flags=re.I)
    return re.sub(r"\s+", " ", text).strip()


async def recall(
    db: Database, embedder: AsyncEmbedder, tenant: str, q: RecallQuery, *,
    weights: dict[str, float] | None = None, candidates: int = 100,
) -> RecallResult:
    """Rank this tenant's live memories for the query; see the module docstring."""
    unknown = [i for i, name in enumerate(q.ablate) if name not in FEATURES and name not in STAGES]
    if unknown:
        raise InvalidInput(f"unknown feature {q.ablate[unknown[0]]!r}; known: "
                           f"{sorted([*FEATURES, *STAGES])}", field=f"ablate[{unknown[0]}]")
    theta = {k: (0.0 if k in q.ablate else v) for k, v in (weights or DEFAULT_WEIGHTS).items()}
    switches = set(q.ablate) & set(STAGES)
    t0 = time.perf_counter()
    admitted = False
    # The query is embedded while its lexical plan is read: neither needs the other.
    embedding = asyncio.ensure_future(_timed(embedder.embed([q.text])))
    try:
        # Pipelined: BEGIN and the tenant binding travel with the plan's query, COMMIT with the
        # candidate query, so a recall waits on PostgreSQL twice. candidates.filters_sql applies
        # the row-level-security policy's predicate itself (see Database.tenant, rls=False). Both
        # queries are prepared at their first use and, unless filters narrow the query (where a
        # plan for their values may do better), run on their generic plans (see
        # candidates.query_context).
        async with pipelined(db, tenant, rls=False, generic_plans=not q.filters.narrows()) as conn:
            plan, speakers = await cand.query_context(conn, tenant, q.namespace, q.text)
            t1 = time.perf_counter()
            vecs, embed_s = await embedding
            named = named_speakers(q.text, speakers)
            if named and "name_strip" not in switches:
                stripped, more_s = await _timed(embedder.embed([strip_names(q.text, named) or q.text]))
                vecs, embed_s = np.concatenate([vecs, stripped]), embed_s + more_s
            qvec = query_vector(vecs)
            t2 = time.perf_counter()
            await db.heavy.acquire()  # admission: see Database.heavy
            admitted, t2a = True, time.perf_counter()
            sent = await cand.send(conn, tenant, q, qvec, plan, embedder.id,
                                   max(candidates, q.top_k), neighbours="neighbours" not in switches)
        c = await cand.unpack(sent, qvec, speakers)
    finally:
        embedding.cancel()  # only matters when the plan failed: nobody waits for it then
        if admitted:
            db.heavy.release()
    t3 = time.perf_counter()
    total, terms = score(c, theta, q.text, switches) if len(c) else (np.zeros(0), {})
    top = np.argsort(-total, kind="stable")[: q.top_k]
    names = list(terms)  # each term's values at the top rows, as Python floats in one step
    parts = np.stack([terms[k] for k in names])[:, top].T.tolist() if names else [[]] * len(top)
    evidence = [_evidence(c, int(i), float(total[i]), dict(zip(names, p, strict=True)),
                          q.include_scores) for i, p in zip(top, parts, strict=True)]
    t4 = time.perf_counter()
    timings = {"plan": t1 - t0, "embed": embed_s, "wait": t2 - t1, "admit": t2a - t2,
               "candidates": t3 - t2a,
               "score": t4 - t3, "total": t4 - t0}
    return RecallResult(evidence, {k: round(v * 1000, 3) for k, v in timings.items()}, len(c), theta)


async def _timed(work: Awaitable[np.ndarray]) -> tuple[np.ndarray, float]:
    """The result of `work` and the seconds it took."""
    start = time.perf_counter()
    out = await work
    return out, time.perf_counter() - start
