"""/v1/brain end to end on the real server: bundles, feedback, weights, rollback, plans, bad input."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from somastack import Client, SomaAPIError
from somastack.brain.context import count_tokens

NOTES = [
    "Ada prefers green tea in the morning.",
    "Ada's favourite biscuit is a ginger snap.",
    "The deploy pipeline runs every Friday at noon.",
    "Bob is allergic to peanuts and shellfish.",
    "The office moves to Lyon in May.",
    "Quarterly taxes are due at the end of April.",
]


def _remember(client: Client, texts: list[str], namespace: str = "notes") -> list[str]:
    out = client.remember_batch([{"content": t} for t in texts], namespace=namespace)
    return [i["id"] for i in out["items"]]


def _problem(fn: Callable[[], object]) -> SomaAPIError:
    with pytest.raises(SomaAPIError) as exc:
        fn()
    return exc.value


def test_evaluate_builds_a_cited_prompt_within_budget(client: Client) -> None:
    ids = _remember(client, NOTES)
    out = client.evaluate("s-1", "What does Ada like to drink?", namespace="notes", token_budget=60,
                          top_k=5)
    assert out["prompt_tokens"] == count_tokens(out["prompt"]) <= 60  # a cited id costs ~30 tokens
    assert out["memories"][0]["id"] == ids[0] and out["memories"][0]["cited"]
    cited = [m["id"] for m in out["memories"] if m["cited"]]
    assert cited and all(f"[m:{i}]" in out["prompt"] for i in cited)
    assert not any(f"[m:{m['id']}]" in out["prompt"] for m in out["memories"] if not m["cited"])
    assert set(out["weights"]) and out["weights_version"] == 0 and out["trace_id"]
    assert {w["memory_id"] for w in out["working_memory"]} == set(cited)
    roomy = client.evaluate("s-1", "When is the deploy?", namespace="notes", token_budget=400, top_k=2)
    assert roomy["memories"][0]["id"] == ids[2]
    assert "Working memory of this session:" in roomy["prompt"] and f"[m:{ids[0]}]" in roomy["prompt"]
    other = client.evaluate("s-2", "When is the deploy?", namespace="notes", token_budget=400, top_k=2,
                            observations=["The user is packing for Lyon."], density=False)
    assert {w["memory_id"] for w in other["working_memory"]} <= {m["id"] for m in other["memories"]} | {None}
    assert [w["content"] for w in other["working_memory"] if w["source"] == "new"] == \
        ["The user is packing for Lyon."]
    assert all(m["confidence"] is None for m in other["memories"])


def test_feedback_learns_versions_and_rolls_back(client: Client) -> None:
    ids = _remember(client, NOTES)
    out = client.evaluate("s", "Ada's drink", namespace="notes", token_budget=200)
    fb = client.feedback(out["trace_id"], [ids[0]], 1.0)
    assert (fb["previous_version"], fb["version"]) == (0, 1) and fb["density_updated"]
    again = _problem(lambda: client.feedback(out["trace_id"], [ids[0]], 1.0))
    assert again.status == 409 and again.field == "trace_id"
    second = client.evaluate("s", "Ada's drink", namespace="notes", token_budget=200)
    assert second["weights"] == fb["weights"] and second["weights_version"] == 1
    assert second["memories"][0]["confidence"] is not None
    assert second["memories"][0]["confidence"] >= max(m["confidence"] for m in second["memories"][1:])
    w = client.weights()
    assert w["current"]["version"] == 1 and [h["version"] for h in w["history"]] == [1]
    assert all(w["bounds"][k][0] <= v <= w["bounds"][k][1] for k, v in w["current"]["weights"].items())
    back = client.rollback_weights(0)
    assert back["version"] == 2 and back["reason"] == "rollback to v0"
    assert client.weights()["current"]["weights"] == out["weights"]
    assert client.rollback_weights(1)["weights"] == fb["weights"]
    missing = _problem(lambda: client.rollback_weights(99))
    assert (missing.status, missing.field) == (404, "version")


def test_bad_feedback_writes_nothing(client: Client, make_client: Callable[[str | None], Client],
                                     db: psycopg.Connection, tenant: str) -> None:
    ids = _remember(client, NOTES)
    out = client.evaluate("s", "taxes", namespace="notes", token_budget=100, top_k=2)
    stranger = _remember(client, ["An unrelated memory about sailing."], namespace="other")[0]
    bad = _problem(lambda: client.feedback(out["trace_id"], [ids[5], stranger], 1.0))
    assert (bad.status, bad.field) == (422, "used_ids[1]")
    assert db.execute("SELECT count(*) FROM brain_weights WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    assert db.execute("SELECT feedback_at FROM brain_traces WHERE id = %s",
                      (out["trace_id"],)).fetchone() == (None,)
    intruder = make_client(f"{tenant}-x")
    gone = _problem(lambda: intruder.feedback(out["trace_id"], [], 1.0))
    assert (gone.status, gone.field) == (404, "trace_id")
    assert client.feedback(out["trace_id"], [ids[5]], 0.5)["version"] == 1
    empty = intruder.evaluate("s", "taxes", namespace="notes", token_budget=100)
    assert empty["memories"] == [] and "[m:" not in empty["prompt"]
    foreign = _problem(lambda: intruder.plan(ids[0], "taxes"))
    assert (foreign.status, foreign.field) == (404, "from")


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/brain/evaluate", {"session_id": "s", "query": "q", "token_budget": 5}, "token_budget"),
    ("/v1/brain/evaluate", {"session_id": "bad id!", "query": "q"}, "session_id"),
    ("/v1/brain/evaluate", {"session_id": "s", "query": "   "}, "query"),
    ("/v1/brain/evaluate", {"session_id": "s", "query": "q", "surprise": 1}, "surprise"),
    ("/v1/brain/feedback", {"trace_id": "nope", "used_ids": [], "reward": 1}, "trace_id"),
    ("/v1/brain/feedback", {"trace_id": "7d4b1c1e-1a35-4ab8-b9f7-3f0e4ad0c1f1", "reward": 2}, "reward"),
    ("/v1/brain/weights/rollback", {"version": -1}, "version"),
    ("/v1/brain/plan", {"from": "a", "to": "b", "max_hops": 0}, "max_hops"),
    ("/v1/brain/plan", {"to": "b"}, "from"),
])
def test_bad_input_is_a_422_naming_the_field(client: Client, path: str, body: dict[str, object],
                                              field: str) -> None:
    resp = client.http.post(path, json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["field"] == field


def test_plan_finds_a_planted_chain_and_frgo_makes_it_cheaper(client: Client, db: psycopg.Connection,
                                                              tenant: str) -> None:
    chain = ["The night ferry to the island leaves from pier nine at dawn.",
             "Grandmother's saffron cake needs cardamom and orange zest.",
             "The quarterly tax return for the bakery must be filed in April."]
    noise = ["The cat sleeps on the red sofa.", "Jazz concerts happen on Thursdays downtown.",
             "The printer on floor two is out of toner.", "Marathon training starts in January.",
             "The garden needs watering twice a week.", "A new bike lane opened on Elm Street."]
    a, b, c = _remember(client, chain, namespace="bridge")
    _remember(client, noise, namespace="bridge")
    client.link(a, b, "related")
    client.link(b, c, "related")
    out = client.plan("ferry departure from the pier", "filing the tax return", namespace="bridge")
    best = out["paths"][0]
    assert [m["id"] for m in best["memories"]] == [a, b, c]
    assert [m["via"] for m in best["memories"]] == ["start", "link", "link"]
    assert out["transport"]["converged"]
    by_id = client.plan(a, "filing the tax return", namespace="bridge", max_hops=2)["paths"][0]
    assert [m["id"] for m in by_id["memories"]] == [a, b, c]
    assert client.plan(a, c, namespace="bridge", max_hops=1)["paths"] == []  # no direct edge
    trace = client.evaluate("s", "ferry and saffron cake", namespace="bridge", token_budget=300)
    assert {a, b} <= {m["id"] for m in trace["memories"]}
    fb = client.feedback(trace["trace_id"], [a, b], 1.0)
    assert fb["links_updated"] >= 1
    row = db.execute("SELECT conductance FROM link_conductance "
                     "WHERE tenant_id = %s AND src = %s AND dst = %s", (tenant, a, b)).fetchone()
    assert row is not None and row[0] > 1.0
    cheaper = client.plan(a, c, namespace="bridge")["paths"][0]
    assert cheaper["cost"] < best["cost"]
    missing = _problem(lambda: client.plan("7d4b1c1e-1a35-4ab8-b9f7-3f0e4ad0c1f1", "tax", namespace="bridge"))
    assert (missing.status, missing.field) == (404, "from")
