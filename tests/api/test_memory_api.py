"""The memory API end to end: remember, merge, upsert, get, patch, list, link, forget, expiry."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from tests.conftest import tenant_rows

from somastack import Client, SomaAPIError
from somastack.api.memory_schemas import MemoryOut, RecallOut


def test_remember_get_roundtrip(client: Client) -> None:
    out = client.remember("Ada prefers green tea", namespace="people", kind="semantic",
                          tags=["pref"], importance=0.7, metadata={"person": "ada"},
                          source="chat", trace_id="tr-1")
    assert out["status"] == "created"
    m = client.get(out["id"])
    assert m["content"] == "Ada prefers green tea"
    assert (m["namespace"], m["kind"], m["tags"]) == ("people", "semantic", ["pref"])
    assert m["metadata"] == {"person": "ada"} and m["importance"] == pytest.approx(0.7)
    assert (m["source"], m["trace_id"]) == ("chat", "tr-1")
    assert m["embedder"] == "all-MiniLM-L6-v2-onnx-int8" and len(m["content_hash"]) == 64
    assert "embedding" not in m
    assert len(client.get(out["id"], include_embedding=True)["embedding"]) == 384


def test_the_client_sends_dates_as_iso_and_the_server_reads_naive_ones_as_utc(client: Client
                                                                             ) -> None:
    when = datetime(2023, 5, 14, 18, 30, tzinfo=UTC)
    aware = client.remember("Ada ran the Bath half marathon", event_time=when)["id"]
    naive = client.remember("Ada stretched after the race", event_time=when.replace(tzinfo=None))["id"]
    for mid in (aware, naive):
        assert datetime.fromisoformat(client.get(mid)["event_time"]) == when
    hits = client.recall("Ada race", filters={"time_from": when, "time_to": when + timedelta(1)})
    assert {e["memory"]["id"] for e in hits["evidence"]} >= {aware, naive}
    assert not client.recall("Ada race", filters={"time_from": when + timedelta(1)})["evidence"]


def test_a_given_vector_is_stored_as_a_unit_vector(client: Client) -> None:
    """Recall's dot products are cosines between unit vectors; a vector given with the memory
    (an import, say) is stored with length 1, in its own direction."""
    given = np.linspace(-0.2, 0.3, 384)
    out = client.remember("a memory brought with its own vector", namespace="given",
                          embedding=given.tolist(), embedder="all-MiniLM-L6-v2-onnx-int8")
    stored = np.array(client.get(out["id"], include_embedding=True)["embedding"])
    assert abs(float(np.linalg.norm(stored)) - 1) < 1e-5
    assert float(stored @ given / np.linalg.norm(given)) > 0.99999


def test_duplicate_content_merges(client: Client, db: psycopg.Connection, tenant: str) -> None:
    a = client.remember("Bob drinks  black coffee", namespace="n", importance=0.2, metadata={"a": 1})
    b = client.remember("Bob drinks black coffee", namespace="n", importance=0.9, metadata={"b": 2},
                        tags=["x"])
    assert b == {"id": a["id"], "status": "merged"}
    m = client.get(a["id"])
    assert m["importance"] == pytest.approx(0.9) and m["metadata"] == {"a": 1, "b": 2}
    assert m["tags"] == ["x"] and tenant_rows(db, tenant) == 1
    other = client.remember("Bob drinks black coffee", namespace="elsewhere")
    assert other["status"] == "created" and other["id"] != a["id"]


def test_key_upsert_is_idempotent(client: Client, db: psycopg.Connection, tenant: str) -> None:
    first = client.remember("the meeting is on Monday", namespace="cal", key="meeting")
    again = client.remember("the meeting is on Monday", namespace="cal", key="meeting")
    moved = client.remember("the meeting moved to Tuesday", namespace="cal", key="meeting")
    assert first["id"] == again["id"] == moved["id"]
    assert (again["status"], moved["status"]) == ("merged", "updated")
    assert client.get(first["id"])["content"] == "the meeting moved to Tuesday"
    assert tenant_rows(db, tenant) == 1
    hits = client.recall("when is the meeting", namespace="cal")["evidence"]
    assert hits[0]["memory"]["content"] == "the meeting moved to Tuesday"


def test_batch_reports_each_item(client: Client) -> None:
    out = client.remember_batch([{"content": "one"}, {"content": "two", "namespace": "b"},
                                 {"content": "one"}], namespace="a")
    assert [i["status"] for i in out["items"]] == ["created", "created", "merged"]
    assert out["items"][0]["id"] == out["items"][2]["id"]
    assert (out["created"], out["merged"]) == (2, 1)
    assert client.get(out["items"][1]["id"])["namespace"] == "b"


def test_patch_reembeds_and_validates(client: Client) -> None:
    mid = client.remember("the sky is green", namespace="facts")["id"]
    patched = client.update(mid, content="the sky is blue", tags=["fixed"], importance=1.0)
    assert patched["content"] == "the sky is blue" and patched["tags"] == ["fixed"]
    top = client.recall("what colour is the sky", namespace="facts")["evidence"][0]
    assert top["memory"]["id"] == mid
    with pytest.raises(SomaAPIError) as e:
        client.update(mid, importance=3)
    assert e.value.status == 422 and e.value.field == "importance"


def test_delete_removes_memory_and_links(client: Client, db: psycopg.Connection, tenant: str) -> None:
    a = client.remember("alpha node", namespace="g")["id"]
    b = client.remember("beta node", namespace="g")["id"]
    client.link(a, b, "next", 0.5)
    client.delete(b)
    with pytest.raises(SomaAPIError) as e:
        client.get(b)
    assert e.value.status == 404
    assert client.links(a) == {"outgoing": [], "incoming": []}
    n = db.execute("SELECT count(*) FROM memory_links WHERE tenant_id = %s", (tenant,)).fetchone()
    assert n == (0,)


def test_links_are_idempotent(client: Client) -> None:
    a = client.remember("first turn", namespace="c")["id"]
    b = client.remember("second turn", namespace="c")["id"]
    client.link(a, b, "next", 0.3)
    again = client.link(a, b, "next", 0.8)
    assert again["weight"] == pytest.approx(0.8)
    links = client.links(a)
    assert len(links["outgoing"]) == 1 and links["outgoing"][0]["dst"] == b
    assert client.links(b)["incoming"][0]["src"] == a


def test_list_paginates_in_creation_order(client: Client) -> None:
    ids = [client.remember(f"note number {i}", namespace="pages")["id"] for i in range(7)]
    page1 = client.list(namespace="pages", limit=3)
    page2 = client.list(namespace="pages", limit=3, cursor=page1["next_cursor"])
    page3 = client.list(namespace="pages", limit=3, cursor=page2["next_cursor"])
    got = [m["id"] for p in (page1, page2, page3) for m in p["items"]]
    assert got == ids and page3["next_cursor"] is None
    assert [m["id"] for m in client.iter_memories(namespace="pages", limit=2)] == ids


def test_forget_by_namespace_subject_and_time(client: Client, db: psycopg.Connection, tenant: str) -> None:
    client.remember("keep me", namespace="keep")
    client.remember("about carol", namespace="x", metadata={"person": "carol"})
    client.remember("about dave", namespace="x", metadata={"person": "dave"})
    a = client.remember("linked", namespace="x")["id"]
    b = client.remember("linked too", namespace="x", metadata={"person": "carol"})["id"]
    client.link(a, b)
    out = client.forget(subject={"person": "carol"})
    assert out["deleted"] == 2
    receipt = db.execute("SELECT tenant_id, deleted, criteria FROM forget_receipts WHERE id = %s",
                         (out["receipt_id"],)).fetchone()
    assert receipt is not None and receipt[0] == tenant and receipt[1] == 2
    assert receipt[2]["subject"] == {"person": "carol"}
    assert client.links(a) == {"outgoing": [], "incoming": []}
    assert client.forget(namespace="x")["deleted"] == 2
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert client.forget(before=future)["deleted"] == 1
    assert tenant_rows(db, tenant) == 0


def test_expired_memories_are_never_returned(client: Client) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    mid = client.remember("a fleeting thought about kiwis", namespace="ttl", expires_at=soon)["id"]
    assert client.get(mid)["id"] == mid
    time.sleep(1.5)
    with pytest.raises(SomaAPIError):
        client.get(mid)
    assert client.list(namespace="ttl")["items"] == []
    assert client.recall("kiwis", namespace="ttl")["evidence"] == []


def test_recall_scores_are_explained(client: Client) -> None:
    client.remember_batch([{"content": t} for t in [
        "Carol adopted a rescue dog named Biscuit", "The quarterly budget review is on Friday",
        "Carol's dog loves the beach", "Paris is the capital of France"]], namespace="r")
    out = client.recall("what is the name of Carol's dog?", namespace="r", top_k=2)
    assert len(out["evidence"]) == 2
    top = out["evidence"][0]
    assert "dog" in top["memory"]["content"]
    assert top["score"] == pytest.approx(sum(top["score_breakdown"].values()), abs=1e-4)
    assert {"dense", "context", "lexical", "diffusion", "session", "recency", "importance"} <= set(
        top["score_breakdown"])
    assert top["provenance"]["matched_by"] and top["provenance"]["embedder"]
    assert {"embed", "candidates", "score", "total"} <= set(out["timings_ms"])
    bare = client.recall("dog", namespace="r", include_scores=False)["evidence"][0]
    assert bare["score_breakdown"] == {}


def test_recall_filters(client: Client) -> None:
    client.remember("Tea with Ada in May", namespace="f", kind="episodic", tags=["social"],
                    metadata={"who": "ada"}, event_time="2024-05-02T10:00:00Z")
    client.remember("Ada likes tea", namespace="f", kind="semantic", tags=["pref"],
                    metadata={"who": "ada"}, event_time="2023-01-01T00:00:00Z")
    client.remember("Tea with Bo in June", namespace="f", kind="episodic", tags=["social"],
                    metadata={"who": "bo"}, event_time="2024-06-10T10:00:00Z")

    def contents(**filters: object) -> set[str]:
        ev = client.recall("tea", namespace="f", filters=filters)["evidence"]
        return {e["memory"]["content"] for e in ev}

    assert contents(kind=["semantic"]) == {"Ada likes tea"}
    assert contents(tags=["social"]) == {"Tea with Ada in May", "Tea with Bo in June"}
    assert contents(metadata={"who": "bo"}) == {"Tea with Bo in June"}
    assert contents(time_from="2024-01-01T00:00:00Z", time_to="2024-05-31T00:00:00Z") == {
        "Tea with Ada in May"}
    assert len(client.recall("tea")["evidence"]) == 3  # no namespace: every namespace


def test_recall_answer_is_exactly_recall_out(client: Client) -> None:
    """Recall serialises its result directly (no re-validation): it must still be RecallOut."""
    client.remember_batch([
        {"content": "Ada flew to Lisbon for the conference", "metadata": {"speaker": "Ada", "n": 1.5},
         "tags": ["trip"], "importance": 0.7, "event_time": "2024-05-01T10:00:00Z",
         "source": "chat", "trace_id": "t-1", "key": "lisbon"},
        {"content": "Bruno stayed home and baked bread", "ttl_s": 3600},
    ], namespace="shape")
    resp = client.http.post("/v1/memory/recall", json={"query": "who went to Lisbon?",
                                                        "namespace": "shape"})
    body = resp.json()
    assert resp.headers["content-type"] == "application/json" and len(body["evidence"]) == 2
    assert RecallOut.model_validate(body).model_dump(mode="json") == body
    assert set(body["evidence"][0]["memory"]) == set(MemoryOut.model_fields) - {"embedding"}


def test_recall_in_a_large_namespace_scores_a_bounded_lexical_list(client: Client) -> None:
    """Past 2,000 memories a term every memory holds is matched, but only 500 are scored."""
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(2100, 384))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for start in range(0, 2100, 700):
        client.remember_batch([{"content": f"shared words, item {i}", "embedding": vecs[i].tolist(),
                                "embedder": "all-MiniLM-L6-v2-onnx-int8"}
                               for i in range(start, start + 700)], namespace="large")
    hits = client.recall("shared words", namespace="large", top_k=20)["evidence"]
    assert len(hits) == 20
    assert any(h["provenance"]["lexical_rank"] is not None for h in hits)
