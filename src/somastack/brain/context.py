"""Context bundles: recall + working memory + density confidence → a cited prompt within a budget.

`evaluate` ranks memories through `recall.recall` with the tenant's learnt θ, records a trace
(the query, the ranked ids and each memory's feature values x_f = term_f / θ_f) for feedback to
learn from, admits the memories that made it into the prompt to the session's working memory,
and assembles the prompt. Tokens are counted with the embedder's WordPiece tokenizer
(all-MiniLM-L6-v2 `tokenizer.json`, without special tokens): a stand-in for the LLM's own
tokenizer, close for English prose; leave headroom when the LLM's tokenizer differs.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from tokenizers import Tokenizer

from somastack.brain import density, recall, weights
from somastack.brain.embed import AsyncEmbedder
from somastack.brain.model import RecallQuery
from somastack.brain.wm import WMItem, WorkingMemoryStore, ranked
from somastack.config import Settings
from somastack.store import Database

TOKENIZER = "all-MiniLM-L6-v2 WordPiece (embedder's tokenizer.json, no special tokens)"
ALL_NAMESPACES = "*"


@lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    raw = (resources.files("somastack") / "models" / "all-MiniLM-L6-v2" / "tokenizer.json").read_text()
    tok = Tokenizer.from_str(raw)
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(text: str) -> int:
    """Word pieces of `text` under the embedder's tokenizer (see the module docstring)."""
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


@dataclass
class EvaluateRequest:
    session_id: str
    query: str
    token_budget: int
    namespace: str | None = None
    top_k: int = 10
    density: bool | None = None  # None: the server's setting
    include_working_memory: bool = True
    observations: list[str] = field(default_factory=list)  # new WM items, not stored as memories


@dataclass
class Bundle:
    memories: list[dict[str, Any]]
    working_memory: list[dict[str, Any]]
    prompt: str
    prompt_tokens: int
    weights: dict[str, float]
    weights_version: int
    trace_id: uuid.UUID
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokenizer: str = TOKENIZER


def feature_values(breakdown: dict[str, float], theta: dict[str, float]) -> dict[str, float]:
    """x_f = (θ_f·x_f) / θ_f for the weighted features in the breakdown (θ_f = 0 → unknown)."""
    return {f: breakdown[f] / theta[f] for f in recall.FEATURES
            if f in breakdown and theta.get(f)}


def cite(item_id: str) -> str:
    return f"[m:{item_id}]"


def _line(memory: dict[str, Any]) -> str:
    when = memory.get("event_time")
    date = f"({when.date().isoformat()}) " if when is not None else ""
    return f"{cite(str(memory['id']))} {date}{' '.join(memory['content'].split())}\n"


def _wm_line(item: WMItem) -> str:
    ref = cite(item.memory_id) if item.memory_id else f"[wm:{item.key[:12]}]"
    return f"{ref} {' '.join(item.content.split())}\n"


def assemble_prompt(query: str, memories: list[dict[str, Any]], wm_items: list[WMItem],
                    budget: int) -> tuple[str, int, set[str]]:
    """Greedy fill: header, then memories in rank order, then working memory, each line only if
    it fits what is left of the budget. Returns the prompt, its tokens and the cited memory ids."""
    header = f"Memories relevant to: {' '.join(query.split())}\n"
    wm_header = "Working memory of this session:\n"
    used = count_tokens(header)
    if used > budget:
        return "", 0, set()
    parts, cited = [header], set()
    for m in memories:
        line = _line(m)
        cost = count_tokens(line)
        if used + cost <= budget:
            parts.append(line)
            used += cost
            cited.add(str(m["id"]))
    rest = [it for it in wm_items if not (it.memory_id and it.memory_id in cited)]
    if rest and used + count_tokens(wm_header) <= budget:
        wm_parts, wm_used = [wm_header], count_tokens(wm_header)
        for it in rest:
            cost = count_tokens(_wm_line(it))
            if used + wm_used + cost <= budget:
                wm_parts.append(_wm_line(it))
                wm_used += cost
        if len(wm_parts) > 1:
            parts += wm_parts
            used += wm_used
    return "".join(parts), used, cited


async def _vectors(conn: psycopg.AsyncConnection[Any], tenant: str, ids: list[str]) -> dict[str, np.ndarray]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT id, embedding FROM memories WHERE tenant_id = %s AND id = ANY(%s)",
        (tenant, [uuid.UUID(i) for i in ids]))
    return {str(r["id"]): r["embedding"].to_numpy() for r in await cur.fetchall()}


async def load_density(conn: psycopg.AsyncConnection[Any], tenant: str, namespace: str | None,
                       dims: int) -> np.ndarray | None:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT rho, dims FROM brain_density WHERE tenant_id = %s AND namespace = %s",
        (tenant, namespace or ALL_NAMESPACES))
    row = await cur.fetchone()
    if row is None or row["dims"] != dims:
        return None
    return density.from_bytes(bytes(row["rho"]), dims)


def wm_out(items: list[tuple[WMItem, float]]) -> list[dict[str, Any]]:
    return [{"key": it.key, "memory_id": it.memory_id, "content": it.content, "source": it.source,
             "hits": it.hits, "weight": round(w, 6)} for it, w in items]


def new_item(content: str, vector: np.ndarray) -> WMItem:
    """A working-memory item that is not a stored memory (keyed by its content hash)."""
    key = hashlib.sha256(" ".join(content.split()).encode()).hexdigest()
    return WMItem(key, content, vector, "new")


async def evaluate(db: Database, embedder: AsyncEmbedder, settings: Settings, wm: WorkingMemoryStore,
                   tenant: str, req: EvaluateRequest) -> Bundle:
    """The context bundle for one query in one session; see the module docstring."""
    bounds = weights.bounds_from(settings)
    async with db.tenant(tenant) as conn:
        theta = await weights.current(conn, tenant, bounds)
    result = await recall.recall(
        db, embedder, tenant,
        RecallQuery(text=req.query, namespace=req.namespace,
                    top_k=max(settings.brain_trace_size, req.top_k), include_scores=True),
        weights=theta.weights, candidates=settings.recall_candidates)
    shown = result.evidence[: req.top_k]
    held = await wm.items(tenant, req.session_id) if req.include_working_memory else []
    now_ranked = ranked(held, wm.policy, time.time())
    prompt, tokens, cited = assemble_prompt(req.query, [e.memory for e in shown],
                                            [it for it, _ in now_ranked], req.token_budget)
    trace_id = uuid.uuid4()
    use_density = settings.brain_density if req.density is None else req.density
    async with db.tenant(tenant) as conn:
        vecs = await _vectors(conn, tenant, [str(e.memory["id"]) for e in shown])
        rho = await load_density(conn, tenant, req.namespace, embedder.dims) if use_density else None
        await conn.execute(
            "INSERT INTO brain_traces (id, tenant_id, session_id, namespace, query, weights, items) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (trace_id, tenant, req.session_id, req.namespace, req.query, Jsonb(theta.weights),
             Jsonb([{"id": str(e.memory["id"]), "score": e.score,
                     "features": feature_values(e.score_breakdown, theta.weights)}
                    for e in result.evidence])))
    confidence: dict[str, float] = {}
    if rho is not None and vecs:
        (qvec,) = await embedder.embed([req.query])
        ids = list(vecs)
        conf = density.density_confidence(rho, qvec, np.stack([vecs[i] for i in ids]))
        confidence = {i: round(float(c), 6) for i, c in zip(ids, conf, strict=True)}
    admitted = [WMItem(str(e.memory["id"]), e.memory["content"], vecs[str(e.memory["id"])], "recalled",
                       memory_id=str(e.memory["id"]))
                for e in shown if str(e.memory["id"]) in cited and str(e.memory["id"]) in vecs]
    if req.observations and req.include_working_memory:
        seen = await embedder.embed(req.observations)
        admitted += [new_item(text, v) for text, v in zip(req.observations, seen, strict=True)]
    after = await wm.admit(tenant, req.session_id, admitted) if req.include_working_memory else []
    memories = [{**e.memory, "score": e.score, "score_breakdown": e.score_breakdown,
                 "confidence": confidence.get(str(e.memory["id"])), "cited": str(e.memory["id"]) in cited}
                for e in shown]
    return Bundle(memories, wm_out(ranked(after, wm.policy, time.time())), prompt, tokens, theta.weights,
                  theta.version, trace_id, result.timings_ms)

