"""Feedback on a training set moves recall@10 up on a held-out set.

The data: topics with 24 near-identical status notes each; one per topic is the note that
matters, and its writer marked it important (0.95, the others 0.1–0.4). Text alone cannot tell
the notes apart, so the default weighting (importance 0.05) finds the right note about as often
as chance; feedback saying which note was used should teach θ to lean on importance.
"""

from __future__ import annotations

import random

from somastack import Client

TOPICS = ["billing migration", "mobile app redesign", "warehouse robots", "data lake cleanup",
          "customer portal", "security audit", "hiring pipeline", "office relocation",
          "payment gateway", "search relevance"]
QUERIES = ["What is the status of the {t}?", "How is the {t} going?"]
PER_TOPIC = 24


def _load(client: Client, rng: random.Random) -> dict[str, str]:
    """Remembers the notes; returns topic → id of the note that matters."""
    items, key_index = [], {}
    for t in TOPICS:
        key = rng.randrange(PER_TOPIC)
        for k in range(PER_TOPIC):
            items.append({"content": f"Status note {k + 1} on the {t}: work continues as planned.",
                          "importance": 0.95 if k == key else round(rng.uniform(0.1, 0.4), 2)})
            if k == key:
                key_index[t] = len(items) - 1
    ids = [i["id"] for i in client.remember_batch(items, namespace="learn")["items"]]
    return {t: ids[i] for t, i in key_index.items()}


def _recall_at_10(client: Client, topics: list[str], relevant: dict[str, str]) -> float:
    hits = []
    for t in topics:
        for q in QUERIES:
            out = client.evaluate("held-out", q.format(t=t), namespace="learn", top_k=10, token_budget=64,
                                  include_working_memory=False, density=False)
            hits.append(relevant[t] in {m["id"] for m in out["memories"]})
    return sum(hits) / len(hits)


def test_feedback_raises_held_out_recall(client: Client) -> None:
    rng = random.Random(7)
    relevant = _load(client, rng)
    train, held_out = TOPICS[:5], TOPICS[5:]
    before = _recall_at_10(client, held_out, relevant)
    for _ in range(2):
        for t in train:
            for q in QUERIES:
                out = client.evaluate("train", q.format(t=t), namespace="learn", top_k=10, token_budget=64)
                client.feedback(out["trace_id"], [relevant[t]], 1.0)
    w = client.weights()
    after = _recall_at_10(client, held_out, relevant)
    print(f"held-out recall@10: {before:.3f} → {after:.3f}; θ = {w['current']['weights']}")
    assert after >= before + 0.3 and after >= 0.9
    assert w["current"]["weights"]["importance"] > 0.5
    assert all(w["bounds"][k][0] <= v <= w["bounds"][k][1] for k, v in w["current"]["weights"].items())
    client.rollback_weights(0)
    assert client.weights()["current"]["weights"]["importance"] < 0.1  # back to the default
