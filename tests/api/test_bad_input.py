"""Bad input: a 4xx problem+json naming the field, and the database left unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from tests.conftest import tenant_rows

from somastack import Client

BIG = "x" * (32 * 1024 + 1)
ID = "00000000-0000-4000-8000-000000000000"

# (name, method, path, body, expected status, expected field)
CASES: list[tuple[str, str, str, Any, int, str]] = [
    ("empty content", "POST", "/v1/memory/remember", {"content": ""}, 422, "content"),
    ("blank content", "POST", "/v1/memory/remember", {"content": "   \n"}, 422, "content"),
    ("oversized content", "POST", "/v1/memory/remember", {"content": BIG}, 422, "content"),
    ("unknown field", "POST", "/v1/memory/remember", {"content": "a", "colour": "red"}, 422, "colour"),
    ("wrong type", "POST", "/v1/memory/remember", {"content": 42}, 422, "content"),
    ("bad kind", "POST", "/v1/memory/remember", {"content": "a", "kind": "dream"}, 422, "kind"),
    ("importance > 1", "POST", "/v1/memory/remember", {"content": "a", "importance": 1.5}, 422,
     "importance"),
    ("bad namespace", "POST", "/v1/memory/remember", {"content": "a", "namespace": "no spaces"},
     422, "namespace"),
    ("bad time", "POST", "/v1/memory/remember", {"content": "a", "event_time": "yesterday"}, 422,
     "event_time"),
    ("time as a number", "POST", "/v1/memory/remember", {"content": "a", "event_time": 2024}, 422,
     "event_time"),
    ("time as digits", "POST", "/v1/memory/remember", {"content": "a", "expires_at": "1700000000"},
     422, "expires_at"),
    ("time as a float", "POST", "/v1/memory/remember", {"content": "a", "event_time": "1.5e9"},
     422, "event_time"),
    ("filter time as a number", "POST", "/v1/memory/recall",
     {"query": "a", "filters": {"time_from": 1700000000}}, 422, "filters.time_from"),
    ("not JSON", "POST", "/v1/memory/remember", "{not json", 422, "body"),
    ("foreign embedder", "POST", "/v1/memory/remember",
     {"content": "a", "embedding": [0.1] * 384, "embedder": "openai:text-embedding-3-small"}, 422,
     "embedder"),
    ("wrong dimensions", "POST", "/v1/memory/remember",
     {"content": "a", "embedding": [0.1] * 12, "embedder": "all-MiniLM-L6-v2-onnx-int8"}, 422,
     "embedding"),
    ("zero vector", "POST", "/v1/memory/remember",
     {"content": "a", "embedding": [0.0] * 384, "embedder": "all-MiniLM-L6-v2-onnx-int8"}, 422,
     "embedding"),
    ("batch: a zero vector", "POST", "/v1/memory/remember/batch",
     {"items": [{"content": "fine"}, {"content": "b", "embedding": [0.0] * 384,
                                      "embedder": "all-MiniLM-L6-v2-onnx-int8"}]},
     422, "items[1].embedding"),
    ("batch: one bad item", "POST", "/v1/memory/remember/batch",
     {"items": [{"content": "fine"}, {"content": BIG}]}, 422, "items[1].content"),
    ("batch: foreign embedder", "POST", "/v1/memory/remember/batch",
     {"items": [{"content": "fine"}, {"content": "b", "embedding": [0.0] * 384, "embedder": "other"}]},
     422, "items[1].embedder"),
    ("batch: empty", "POST", "/v1/memory/remember/batch", {"items": []}, 422, "items"),
    ("batch: too many", "POST", "/v1/memory/remember/batch",
     {"items": [{"content": f"m{i}"} for i in range(1001)]}, 422, "items"),
    ("top_k too large", "POST", "/v1/memory/recall", {"query": "a", "top_k": 1000}, 422, "top_k"),
    ("top_k zero", "POST", "/v1/memory/recall", {"query": "a", "top_k": 0}, 422, "top_k"),
    ("top_k wrong type", "POST", "/v1/memory/recall", {"query": "a", "top_k": "ten"}, 422, "top_k"),
    ("empty query", "POST", "/v1/memory/recall", {"query": ""}, 422, "query"),
    ("unknown ablation", "POST", "/v1/memory/recall", {"query": "a", "ablate": ["recency", "nope"]},
     422, "ablate[1]"),
    ("invalid UTF-8", "POST", "/v1/memory/remember", b'{"content": "\xff\xfe"}', 400, "body"),
    ("unknown filter", "POST", "/v1/memory/recall", {"query": "a", "filters": {"colour": "x"}}, 422,
     "filters.colour"),
    ("malformed id", "GET", "/v1/memory/not-a-uuid", None, 422, "id"),
    ("malformed id patch", "PATCH", "/v1/memory/123", {"content": "a"}, 422, "id"),
    ("unknown id", "GET", f"/v1/memory/{ID}", None, 404, "id"),
    ("link malformed src", "POST", "/v1/memory/link", {"src": "x", "dst": ID}, 422, "src"),
    ("link unknown src", "POST", "/v1/memory/link", {"src": ID, "dst": ID}, 404, "src"),
    ("link bad weight", "POST", "/v1/memory/link", {"src": ID, "dst": ID, "weight": -1}, 422, "weight"),
    ("forget nothing", "POST", "/v1/memory/forget", {}, 422, "namespace"),
    ("forget bad before", "POST", "/v1/memory/forget", {"before": "soon"}, 422, "before"),
    ("forget before a number", "POST", "/v1/memory/forget", {"before": 1e9}, 422, "before"),
    ("bad cursor", "GET", "/v1/memory?cursor=garbage!", None, 422, "cursor"),
    ("limit too large", "GET", "/v1/memory?limit=5000", None, 422, "limit"),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "status", "field"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_names_the_field_and_writes_nothing(
    client: Client, db: psycopg.Connection, tenant: str,
    name: str, method: str, path: str, body: Any, status: int, field: str,
) -> None:
    client.remember("an existing memory", namespace="default")
    before = tenant_rows(db, tenant)
    kwargs: dict[str, Any] = {}
    if isinstance(body, str | bytes):
        kwargs = {"content": body, "headers": {"content-type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    resp = client.http.request(method, path, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["status"] == status and problem["type"].startswith("urn:somastack:problem:")
    assert problem["field"] == field, problem
    assert field in problem["detail"]
    assert tenant_rows(db, tenant) == before


def test_missing_tenant_is_refused(make_client: Callable[[str | None], Client], db: psycopg.Connection
                                   ) -> None:
    resp = make_client(None).http.post("/v1/memory/remember", json={"content": "who am I?"})
    assert resp.status_code == 401 and resp.json()["field"], resp.text
    assert db.execute("SELECT count(*) FROM memories WHERE content = 'who am I?'").fetchone() == (0,)


def test_malformed_tenant_is_refused(server: str) -> None:
    # The tenant comes from the credential (issue 4); a header alone authenticates nothing.
    with Client(server, tenant="bad tenant!") as c:
        resp = c.http.post("/v1/memory/recall", json={"query": "a"})
    assert resp.status_code == 401 and resp.json()["field"] == "Authorization"
