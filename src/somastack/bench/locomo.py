"""`soma bench locomo`: recall@k on conversation memory, through the real recall path.

Each conversation goes into its own namespace, one memory per turn (speaker, text, image caption;
the session date as event time; dia_id in metadata; consecutive turns linked). Every question of
categories 1–4 is asked through the HTTP API; a question scores the share of its evidence turns
found in the top k. Baselines run in the same process on the same turns and embeddings.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from somastack.bench import baselines
from somastack.bench.locomo_data import Conversation, Question, load_dir
from somastack.bench.server import served
from somastack.bench.stats import machine, percentiles_ms
from somastack.brain.embed import MiniLMEmbedder
from somastack.client import Client
from somastack.config import Settings

KS = (1, 5, 10, 20)
Tick = Callable[[int], None]
Progress = Callable[[str, int], Tick]


def score(ranked: list[list[str]], questions: list[Question]) -> dict[str, Any]:
    """recall@k = |evidence ∩ top k| / |evidence|, averaged overall and per category."""
    per_q = np.array([[len(set(r[:k]) & set(q.evidence)) / len(q.evidence) for k in KS]
                      for r, q in zip(ranked, questions, strict=True)])
    cats = np.array([q.category for q in questions])

    def table(rows: np.ndarray) -> dict[str, float]:
        return {str(k): round(float(rows[:, i].mean()), 4) for i, k in enumerate(KS)}

    return {"overall": table(per_q),
            "by_category": {str(c): table(per_q[cats == c]) for c in sorted(set(cats.tolist()))}}


def _namespace(conv: Conversation) -> str:
    return f"locomo-{conv.name}"


def ingest(client: Client, convs: list[Conversation], tick: Tick) -> dict[str, dict[str, str]]:
    """Remember every turn and link consecutive turns; returns namespace → {memory id: dia_id}."""
    ids: dict[str, dict[str, str]] = {}
    for conv in convs:
        ns = _namespace(conv)
        ids[ns] = {}
        order: list[tuple[str, int]] = []
        for start in range(0, len(conv.turns), 500):
            chunk = conv.turns[start : start + 500]
            items = [{"content": t.content, "key": t.dia_id, "kind": "episodic",
                      "event_time": t.when.isoformat() if t.when else None,
                      "metadata": {"dia_id": t.dia_id, "session": t.session, "speaker": t.speaker}}
                     for t in chunk]
            out = client.remember_batch([{k: v for k, v in i.items() if v is not None} for i in items],
                                        namespace=ns)
            for t, w in zip(chunk, out["items"], strict=True):
                ids[ns][w["id"]] = t.dia_id
                order.append((w["id"], t.session))
            tick(len(chunk))
        pairs = [{"src": a, "dst": b, "rel": "next"}  # consecutive turns of the same session
                 for (a, sa), (b, sb) in zip(order, order[1:], strict=False) if sa == sb and a != b]
        for start in range(0, len(pairs), 1000):
            client.link_batch(pairs[start : start + 1000])
    return ids


def ask(client: Client, convs: list[Conversation], ids: dict[str, dict[str, str]],
        ablate: list[str], tick: Tick) -> tuple[list[list[str]], list[float]]:
    """Every question through /v1/memory/recall; the dia_ids ranked, and each call's latency."""
    ranked, latencies = [], []
    for conv in convs:
        ns = _namespace(conv)
        for q in conv.questions:
            t = time.perf_counter()
            out = client.recall(q.text, namespace=ns, top_k=max(KS), ablate=ablate)
            latencies.append(time.perf_counter() - t)
            ranked.append([ids[ns][e["memory"]["id"]] for e in out["evidence"]])
            tick(1)
    return ranked, latencies


def run_baselines(client: Client, convs: list[Conversation], ids: dict[str, dict[str, str]],
                  questions: list[Question]) -> dict[str, Any]:
    """dense, bm25 and their RRF on the stored turns (stored vectors, same embedder for queries)."""
    embedder = MiniLMEmbedder()
    ranked: dict[str, list[list[str]]] = {"dense": [], "bm25": [], "rrf": []}
    for conv in convs:
        ns = _namespace(conv)
        stored = list(client.iter_memories(namespace=ns, limit=1000, include_embedding=True))
        if stored and stored[0]["embedder"] != embedder.id:
            raise RuntimeError(f"server embeds with {stored[0]['embedder']}, baselines with {embedder.id}")
        dia = [ids[ns][m["id"]] for m in stored]
        docs = np.array([m["embedding"] for m in stored], dtype=np.float32)
        qs = [q.text for q in conv.questions]
        dense = baselines.dense_rank(docs, embedder.embed(qs), max(KS))
        bm25 = baselines.bm25_rank([m["content"] for m in stored], qs, max(KS))
        fused = baselines.rrf_rank(dense, bm25, k=max(KS))
        for name, r in (("dense", dense), ("bm25", bm25), ("rrf", fused)):
            ranked[name] += [[dia[d] for d in row if d >= 0] for row in r]
    return {name: score(r, questions)["overall"] for name, r in ranked.items()}


def run(data: Path, *, with_baselines: bool = False, ablate: list[str] | None = None,
        home: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The whole benchmark against a fresh embedded server; returns the JSON-ready figures."""
    progress = progress or (lambda _label, _total: lambda _n: None)
    convs = load_dir(data)
    questions = [q for c in convs for q in c.questions]
    home = home or Path(tempfile.mkdtemp(prefix="soma-locomo-"))
    probe = machine()  # before the server starts: the host idle
    # a fresh home: its bootstrap admin key acts for the tenant "default"; no rate limit for a benchmark
    with served(home, env={"SOMA_RATE_LIMIT": str(10**9)}) as srv, \
            Client(srv.url, api_key=Settings(home=home).admin_key_file.read_text().strip()) as client:
        t0 = time.perf_counter()
        ids = ingest(client, convs, progress("ingest", sum(len(c.turns) for c in convs)))
        ingest_s = time.perf_counter() - t0
        ranked, latencies = ask(client, convs, ids, [], progress("recall", len(questions)))
        result: dict[str, Any] = {
            "benchmark": "locomo", "data": str(data), "conversations": len(convs),
            "turns": sum(len(c.turns) for c in convs), "n_questions": len(questions),
            "recall_at": score(ranked, questions), "recall_ms": percentiles_ms(latencies, (50, 95)),
            "ingest_s": round(ingest_s, 2), "machine": probe,
        }
        if with_baselines:
            result["baselines"] = run_baselines(client, convs, ids, questions)
        if ablate:
            result["ablations"] = {}
            for feature in ablate:
                r, _ = ask(client, convs, ids, [feature], progress(f"without {feature}", len(questions)))
                result["ablations"][feature] = score(r, questions)["overall"]
    return result
