"""No tenant can read, infer or change another tenant's data, on every tenant-scoped route.

Tenant A creates one of everything (memories with a key, links and a namespace only A uses,
working memory, feedback and so a new weights version, a persona, a session and a turn, a
policy override, an API key). Tenant B, holding its own admin key and its own session token,
then tries to read, list, infer, change and delete each of them, by id and by listing or
filtering; A's session token is turned against B's things the same way. Last, A checks that
nothing of its own changed.

A refusal is a 404 that reads exactly like the answer for an id that exists nowhere (compared
answer for answer), so B cannot even learn that the id exists. The deliberate 403s of
docs/security.md are `X-Soma-Tenant` naming another tenant, `tenant` naming another tenant
(POST /v1/session/mint, GET /v1/audit) and platform-admin routes; each is checked to read the
same for a tenant that does not exist, so none is an existence oracle.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from somastack import Client

ABSENT_UUID = "00000000-0000-4000-8000-000000000000"
ABSENT_TURN = "turn_" + "0" * 20
ABSENT_JTI = "0" * 32
ABSENT_HASH = "0" * 64
ABSENT_KEY_ID = "0" * 16
ABSENT_TENANT = "no-such-tenant-0000"
SHARED_NS = "shared"  # a namespace name both tenants use
LOCKED_NS = "a-locked"  # A's policy override makes it read-only for A
TURN_TEXT = "Say hi."
LEXICAL_QUERY = "zebra quartz"
TIME_FEATURES = {"recency"}  # score features that move with the clock, not with the data


@dataclass
class World:
    """Both tenants, what A made (by id), and A's state before B's attempts."""

    secret: str  # only A's contents hold it; B never sends it
    a_name: str
    b_name: str
    a: Client  # A's admin key
    b: Client  # B's admin key
    a_jwt: Client  # A's session token
    b_jwt: Client  # B's session token
    a_ns: str
    mem: dict[str, str]  # A's memories: secret, note, shared, locked-out…
    b_mem: list[str]  # B's memories in SHARED_NS
    wm_session: str
    trace_used: str  # A's trace that has feedback
    trace_open: str  # A's trace without feedback
    persona: dict[str, Any]
    b_persona: dict[str, Any]
    session: dict[str, Any]
    b_session: dict[str, Any]
    turn_id: str
    b_turn_events: list[dict[str, Any]]
    b_turn_header: str
    key: dict[str, Any]  # the key A created (its secret in key_secret)
    key_secret: str
    plain_persona: dict[str, Any]  # an A persona whose document holds no secret
    a_weights: dict[str, float]  # what A's feedback learned (not the defaults)
    a_admin_key_id: str
    b_admin_key_id: str
    b_recall_before: dict[str, Any]
    b_recall_after: dict[str, Any]
    before: dict[str, Any]
    audit_before: list[dict[str, Any]]
    server_errors: list[str] = field(default_factory=list)

    @property
    def a_ids(self) -> set[str]:
        return set(self.mem.values())

    @property
    def a_actors(self) -> set[str]:
        return {f"key:{self.a_admin_key_id}", f"key:{self.key['id']}", f"token:{self.session['jti']}"}

    @property
    def b_actors(self) -> set[str]:
        return {f"key:{self.b_admin_key_id}", f"token:{self.b_session['jti']}"}


def key_id(key: str) -> str:
    """The id of an API key `soma_<16 hex id>_<secret>`."""
    return key.split("_")[1]


def watch_5xx(c: Client, seen: list[str]) -> Client:
    """Record every 5xx answer the client receives (a 5xx is never an acceptable refusal)."""
    def hook(resp: httpx.Response) -> None:
        if resp.status_code >= 500:
            seen.append(f"{resp.request.method} {resp.request.url} -> {resp.status_code}")
    c.http.event_hooks = {"request": [], "response": [hook]}
    return c


def every_memory(c: Client) -> list[dict[str, Any]]:
    page = c.list(limit=1000)
    assert page["next_cursor"] is None
    return sorted(page["items"], key=lambda m: m["id"])


def every_audit_row(c: Client) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.request("GET", "/v1/audit", params={"after_seq": after, "limit": 1000})
        rows += page["items"]
        if page["next_after_seq"] is None:
            return rows
        after = page["next_after_seq"]


def snapshot(w: World) -> dict[str, Any]:
    """Everything of A's the API shows A (key `last_used_at` aside: A's own use moves it)."""
    memories = every_memory(w.a)
    return {
        "memories": memories,
        "links": {m["id"]: w.a.links(m["id"]) for m in memories},
        "weights": w.a.weights(limit=1000),
        "personas": w.a.personas(limit=1000),
        "turns": w.a.turns(limit=100),
        "turn": w.a.get_turn(w.turn_id),
        "keys": [{k: v for k, v in row.items() if k != "last_used_at"}
                 for row in w.a.request("GET", "/v1/keys")],
        "policy": w.a.request("GET", "/v1/policy"),
        "usage": w.a.usage(group_by=["session", "agent"]),
        "tenant": w.a.request("GET", f"/v1/tenants/{w.a_name}"),
    }


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


@pytest.fixture(scope="module")
def world(server: str, tenant_key: Callable[[str], str | None]) -> Iterator[World]:
    secret = f"S{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    a_name, b_name = f"iso-a-{tag}", f"iso-b-{tag}"
    a_key, b_key = tenant_key(a_name), tenant_key(b_name)
    assert a_key and b_key
    errors: list[str] = []
    a = watch_5xx(Client(server, api_key=a_key), errors)
    b = watch_5xx(Client(server, api_key=b_key), errors)
    a_ns = f"a-only-{tag}"

    # B first stores its own memories and recalls them, to compare after A writes look-alikes.
    b_mem = [b.remember(text, namespace=SHARED_NS)["id"] for text in (
        "Zebra quartz samples are kept in the basement.", "The quartz order is late.",
        "Lunch is at noon on Fridays.")]
    b_recall_before = b.recall(LEXICAL_QUERY, namespace=SHARED_NS)

    mem = {
        "secret": a.remember(f"A-SECRET {secret}: the vault code is 7319.", namespace=a_ns,
                             key="vault", kind="semantic", tags=["secret"],
                             metadata={"owner": "a", "subject": "vault"}, importance=0.9)["id"],
        "note": a.remember(f"A-NOTE {secret}: the vault is behind the boiler.", namespace=a_ns,
                           metadata={"owner": "a"})["id"],
        "shared": a.remember("Zebra quartz inventory: twelve crates.", namespace=SHARED_NS,
                             metadata={"owner": "a"})["id"],
    }
    decoys = a.remember_batch([{"content": f"Zebra quartz crate {i} {secret}", "metadata": {"owner": "a"}}
                               for i in range(20)], namespace=SHARED_NS)
    mem.update({f"decoy{i}": item["id"] for i, item in enumerate(decoys["items"])})
    a.link(mem["secret"], mem["note"], rel="about", weight=0.7)
    a.link(mem["note"], mem["shared"], rel="near", weight=0.4)
    b_recall_after = b.recall(LEXICAL_QUERY, namespace=SHARED_NS)

    # Working memory, a trace with feedback (weights v1) and one without.
    wm_session = f"wm-{tag}"
    used = a.evaluate(wm_session, "What is the vault code?", namespace=a_ns, top_k=3,
                      observations=[f"A-OBS {secret}: the courier comes at nine."])
    assert any(i["content"].startswith("A-OBS") for i in used["working_memory"])
    assert mem["secret"] in {m["id"] for m in used["memories"]}
    fb = a.feedback(used["trace_id"], [mem["secret"]], 1.0)
    assert fb["version"] == 1 and fb["weights"] != used["weights"], fb
    trace_open = a.evaluate(wm_session, "Where is the vault?", namespace=a_ns)["trace_id"]

    # A persona, a session and a (cheap) turn with an Idempotency-Key.
    persona = a.create_persona("a-helper", f"A-PERSONA {secret}: you are A's private assistant.",
                               namespace=a_ns)
    session = a.mint_session(persona["hash"], memory="read", tokens=5000, ttl_s=900)
    idem = f"idem-{tag}"
    events = list(a.turn(session, TURN_TEXT, idempotency_key=idem, max_tokens=4, max_steps=0))
    turn_id = events[0]["turn_id"]
    assert events[-1]["type"] == "usage", events

    # A policy override (it binds A: A's own write to LOCKED_NS is denied) and an API key.
    a.request("PUT", "/v1/policy", json={"module": (
        "package soma.tenant\nimport rego.v1\n"
        f'deny contains "A-POLICY {secret}: {LOCKED_NS} is read-only" if {{\n'
        '\tinput.action == "memory.write"\n'
        f'\tinput.resource.namespace == "{LOCKED_NS}"\n}}\n')})
    denied = a.http.post("/v1/memory/remember", json={"content": "x", "namespace": LOCKED_NS})
    assert denied.status_code == 403 and secret in denied.json()["detail"], denied.text
    created = a.request("POST", "/v1/keys", json={"name": f"a-key-{secret}", "scopes": ["memory:read"]})
    key = {k: v for k, v in created.items() if k != "key"}
    plain_persona = a.create_persona("a-plain", "You answer plainly.", namespace=SHARED_NS)

    # B's own persona (its namespace is the name of A's), session and a turn that reuses A's
    # Idempotency-Key and text: it must run as B's own turn, not replay A's.
    b_persona = b.create_persona("b-helper", "You are B's assistant.", namespace=a_ns)
    b_session = b.mint_session(b_persona["hash"], memory="read", tokens=5000, ttl_s=900)
    with b.http.stream("POST", "/v1/turn", json={
            "session_id": b_session["jti"], "inputs": {"text": TURN_TEXT}, "max_tokens": 4,
            "max_steps": 0},
            headers={"Authorization": f"Bearer {b_session['jwt']}", "Idempotency-Key": idem}) as resp:
        assert resp.status_code == 200
        b_turn_header = resp.headers["x-turn-id"]
        b_turn_events = sse_events(resp.read().decode())

    a_jwt = watch_5xx(Client(server, api_key=session["jwt"]), errors)
    b_jwt = watch_5xx(Client(server, api_key=b_session["jwt"]), errors)
    w = World(secret=secret, a_name=a_name, b_name=b_name, a=a, b=b, a_jwt=a_jwt,
              b_jwt=b_jwt, a_ns=a_ns, mem=mem, b_mem=b_mem, wm_session=wm_session,
              trace_used=used["trace_id"], trace_open=trace_open, persona=persona,
              b_persona=b_persona, session=session, b_session=b_session, turn_id=turn_id,
              b_turn_events=b_turn_events, b_turn_header=b_turn_header,
              key=key, key_secret=created["key"], plain_persona=plain_persona,
              a_weights=fb["weights"], a_admin_key_id=key_id(a_key), b_admin_key_id=key_id(b_key),
              b_recall_before=b_recall_before, b_recall_after=b_recall_after, before={},
              audit_before=[], server_errors=errors)
    w.before = snapshot(w)
    w.audit_before = every_audit_row(a)
    yield w
    for c in (a, b, a_jwt, b_jwt):
        c.close()


# ---- how a refusal must read ------------------------------------------------------------------

def norm(detail: str, ref: str) -> str:
    return detail.replace(ref, "<ref>")


def same_as_absent(got: httpx.Response, absent: httpx.Response, ref: str, absent_ref: str,
                   status: int = 404) -> None:
    """`got` (B naming A's `ref`) is refused exactly as `absent` (naming `absent_ref`, which
    exists nowhere): same status, problem type, field, and detail but for the reference."""
    what = f"{got.request.method} {got.request.url}"
    assert got.status_code == status, f"{what}: {got.status_code} {got.text}"
    assert absent.status_code == status, f"control {absent.request.url}: {absent.text}"
    g, a = got.json(), absent.json()
    assert (g["type"], g.get("field"), g["title"]) == (a["type"], a.get("field"), a["title"]), what
    assert norm(g["detail"], ref) == norm(a["detail"], absent_ref), what


def no_secret(w: World, resp: httpx.Response | Any, ids: bool = True) -> None:
    """Nothing of A's content (nor, with `ids`, A's memory ids) is in the answer."""
    text = resp.text if isinstance(resp, httpx.Response) else json.dumps(resp, default=str)
    assert w.secret not in text, f"A's content leaked: {text[:500]}"
    for mid in w.a_ids if ids else ():
        assert mid not in text, f"A's memory id {mid} leaked: {text[:500]}"


def ids_of(items: list[dict[str, Any]]) -> set[str]:
    return {str(i["id"]) for i in items}


# ---- the attempts -----------------------------------------------------------------------------

ATTEMPTS: list[Any] = []


def attempt(name: str) -> Callable[[Callable[[World], None]], Callable[[World], None]]:
    """Register one of B's (or A's token's) attempts under a name saying resource and attempt."""
    def register(fn: Callable[[World], None]) -> Callable[[World], None]:
        ATTEMPTS.append(pytest.param(fn, id=name))
        return fn
    return register


# memory: by id

@attempt("memory: GET /v1/memory/{A id} (and ?include_embedding)")
def _(w: World) -> None:
    for mid in (w.mem["secret"], w.mem["shared"]):
        for params in ({}, {"include_embedding": "true"}):
            same_as_absent(w.b.http.get(f"/v1/memory/{mid}", params=params),
                           w.b.http.get(f"/v1/memory/{ABSENT_UUID}", params=params), mid, ABSENT_UUID)


@attempt("memory: PATCH /v1/memory/{A id}")
def _(w: World) -> None:
    for body in ({"content": "overwritten by B"}, {"importance": 0.0}, {"ttl_s": 1},
                 {"metadata": {"owner": "b"}}):
        same_as_absent(w.b.http.patch(f"/v1/memory/{w.mem['secret']}", json=body),
                       w.b.http.patch(f"/v1/memory/{ABSENT_UUID}", json=body),
                       w.mem["secret"], ABSENT_UUID)


@attempt("memory: DELETE /v1/memory/{A id}")
def _(w: World) -> None:
    for mid in (w.mem["secret"], w.mem["decoy0"]):
        same_as_absent(w.b.http.delete(f"/v1/memory/{mid}"),
                       w.b.http.delete(f"/v1/memory/{ABSENT_UUID}"), mid, ABSENT_UUID)
    assert w.a.get(w.mem["decoy0"])["id"] == w.mem["decoy0"]


@attempt("memory: GET /v1/memory/{A id}/links")
def _(w: World) -> None:
    same_as_absent(w.b.http.get(f"/v1/memory/{w.mem['note']}/links"),
                   w.b.http.get(f"/v1/memory/{ABSENT_UUID}/links"), w.mem["note"], ABSENT_UUID)


@attempt("memory: POST /v1/memory/link B->A, A->B, and re-weight A's own link A->A")
def _(w: World) -> None:
    mine, secret, note = w.b_mem[0], w.mem["secret"], w.mem["note"]
    link = {"rel": "about", "weight": 0.01}
    for body, control in (({"src": mine, "dst": secret}, {"src": mine, "dst": ABSENT_UUID}),
                          ({"src": secret, "dst": mine}, {"src": ABSENT_UUID, "dst": mine}),
                          ({"src": secret, "dst": note}, {"src": ABSENT_UUID, "dst": note})):
        same_as_absent(w.b.http.post("/v1/memory/link", json={**body, **link}),
                       w.b.http.post("/v1/memory/link", json={**control, **link}), secret, ABSENT_UUID)
    assert w.b.links(mine) == {"outgoing": [], "incoming": []}


@attempt("memory: POST /v1/memory/link/batch mixing B's own link with one to A's memory")
def _(w: World) -> None:
    def batch(other: str) -> httpx.Response:
        return w.b.http.post("/v1/memory/link/batch", json={"links": [
            {"src": w.b_mem[0], "dst": w.b_mem[1]}, {"src": w.b_mem[1], "dst": other}]})
    same_as_absent(batch(w.mem["shared"]), batch(ABSENT_UUID), w.mem["shared"], ABSENT_UUID)
    assert w.b.links(w.b_mem[0])["outgoing"] == []  # all or nothing: B's own link was not made


# memory: listing, searching, filtering

@attempt("memory: GET /v1/memory (all, A's namespace, tag, kind, metadata)")
def _(w: World) -> None:
    for params in ({}, {"namespace": w.a_ns}, {"namespace": SHARED_NS}, {"tag": "secret"},
                   {"kind": "semantic"}, {"limit": 1000}):
        page = w.b.list(**params)
        assert not ids_of(page["items"]) & w.a_ids, params
        no_secret(w, page)


@attempt("memory: GET /v1/memory with a cursor from A's own listing")
def _(w: World) -> None:
    cursor = w.a.list(limit=1)["next_cursor"]
    assert cursor
    resp = w.b.http.get("/v1/memory", params={"cursor": cursor, "limit": 1000})
    assert resp.status_code in (200, 422), resp.text
    no_secret(w, resp)


@attempt("memory: POST /v1/memory/recall (all namespaces, A's, filters, A's words)")
def _(w: World) -> None:
    for body in ({"query": "vault code 7319"}, {"query": "vault", "namespace": w.a_ns},
                 {"query": LEXICAL_QUERY, "namespace": SHARED_NS, "top_k": 100},
                 {"query": "courier", "filters": {"metadata": {"owner": "a"}}},
                 {"query": "secret", "filters": {"tags": ["secret"], "kind": ["semantic"]}}):
        resp = w.b.http.post("/v1/memory/recall", json=body)
        assert resp.status_code == 200, resp.text
        assert not {e["memory"]["id"] for e in resp.json()["evidence"]} & w.a_ids, body
        no_secret(w, resp)


@attempt("memory: infer A's writes from B's recall scores (lexicon, candidates)")
def _(w: World) -> None:
    before, after = w.b_recall_before, w.b_recall_after
    assert before["candidates"] == after["candidates"]
    assert [e["memory"]["id"] for e in before["evidence"]] == [e["memory"]["id"] for e in after["evidence"]]
    for x, y in zip(before["evidence"], after["evidence"], strict=True):
        assert {k: v for k, v in x["score_breakdown"].items() if k not in TIME_FEATURES} == \
            {k: v for k, v in y["score_breakdown"].items() if k not in TIME_FEATURES}
    assert any(v for e in before["evidence"] for k, v in e["score_breakdown"].items()
               if k not in TIME_FEATURES), "the comparison needs scores that depend on the data"


# memory: writes that name A's things

@attempt("memory: remember with A's namespace+key and A's exact content (no upsert/merge into A)")
def _(w: World) -> None:
    same_key = w.b.remember("B's vault note", namespace=w.a_ns, key="vault")
    assert same_key["status"] == "created" and same_key["id"] not in w.a_ids
    same_content = w.b.remember("Zebra quartz inventory: twelve crates.", namespace=SHARED_NS)
    assert same_content["status"] == "created" and same_content["id"] not in w.a_ids
    batch = w.b.remember_batch([{"content": "B again", "key": "vault"}], namespace=w.a_ns)
    assert batch["items"][0]["id"] == same_key["id"] and batch["updated"] == 1  # B's own row
    secret = w.a.get(w.mem["secret"])
    assert secret["content"].startswith("A-SECRET") and secret["key"] == "vault"


@attempt("memory: POST /v1/memory/forget by A's namespace, A's subject, and before=now")
def _(w: World) -> None:
    b_in_a_ns = len(w.b.list(namespace=w.a_ns, limit=1000)["items"])
    assert w.b.forget(namespace=w.a_ns)["deleted"] == b_in_a_ns
    assert w.b.forget(subject={"owner": "a"})["deleted"] == 0
    assert w.b.forget(subject={"subject": "vault"}, namespace=w.a_ns)["deleted"] == 0
    assert w.b.forget(namespace=w.a_ns, before="2999-01-01T00:00:00Z")["deleted"] == 0
    assert {m["id"] for m in every_memory(w.a)} == w.a_ids


# brain v2

@attempt("brain: POST /v1/brain/evaluate on A's working-memory session id and namespace")
def _(w: World) -> None:
    for body in ({"session_id": w.wm_session, "query": "courier vault",
                  "observations": ["B-OBS: B was here."]},
                 {"session_id": w.wm_session, "query": "vault code", "namespace": w.a_ns}):
        resp = w.b.http.post("/v1/brain/evaluate", json=body)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert not ids_of(out["memories"]) & w.a_ids
        assert not {i["memory_id"] for i in out["working_memory"]} & w.a_ids
        assert all(not i["content"].startswith("A-OBS") for i in out["working_memory"])
        assert out["weights"] != w.a_weights
        no_secret(w, resp)


@attempt("brain: POST /v1/brain/feedback on A's traces (used: 404 not 409; open: 404)")
def _(w: World) -> None:
    body = {"used_ids": [], "reward": 1.0}
    for trace in (w.trace_used, w.trace_open):
        same_as_absent(w.b.http.post("/v1/brain/feedback", json={**body, "trace_id": trace}),
                       w.b.http.post("/v1/brain/feedback", json={**body, "trace_id": ABSENT_UUID}),
                       trace, ABSENT_UUID)


@attempt("brain: POST /v1/brain/feedback on B's trace naming A's memory in used_ids")
def _(w: World) -> None:
    # A query for exactly A's memory: were A's rows candidates, it would be in the trace.
    trace = w.b.evaluate("b-fb", "Zebra quartz inventory: twelve crates.", namespace=SHARED_NS,
                         top_k=100)["trace_id"]
    fb = w.b.http.post("/v1/brain/feedback",
                       json={"trace_id": trace, "used_ids": [w.mem["shared"]], "reward": 1.0})
    control = w.b.http.post("/v1/brain/feedback",
                            json={"trace_id": trace, "used_ids": [ABSENT_UUID], "reward": 1.0})
    same_as_absent(fb, control, w.mem["shared"], ABSENT_UUID, status=422)


@attempt("brain: GET /v1/brain/weights shows none of A's versions or traces")
def _(w: World) -> None:
    resp = w.b.http.get("/v1/brain/weights", params={"limit": 1000})
    assert resp.status_code == 200
    mine = resp.json()
    assert w.trace_used not in resp.text and w.trace_open not in resp.text
    assert all(h["reason"] != "feedback" for h in mine["history"])  # B never gave feedback
    assert mine["current"]["weights"] != w.a_weights


@attempt("brain: POST /v1/brain/weights/rollback to A's version, then B's own to 0")
def _(w: World) -> None:
    got = w.b.http.post("/v1/brain/weights/rollback", json={"version": 1})
    control = w.b.http.post("/v1/brain/weights/rollback", json={"version": 99})
    assert (got.status_code, got.json()["field"]) == (control.status_code, control.json()["field"]) \
        == (404, "version"), got.text
    assert re.sub(r"\d+", "#", got.json()["detail"]) == re.sub(r"\d+", "#", control.json()["detail"])
    assert w.b.rollback_weights(0)["reason"] == "rollback to v0"  # B's own: fine, and only B's
    assert w.a.weights(limit=1000) == w.before["weights"]


@attempt("brain: POST /v1/brain/plan from/to A's memory ids, and by text in A's namespace")
def _(w: World) -> None:
    for side in ("from", "to"):
        other = "to" if side == "from" else "from"
        same_as_absent(
            w.b.http.post("/v1/brain/plan", json={side: w.mem["secret"], other: "vault"}),
            w.b.http.post("/v1/brain/plan", json={side: ABSENT_UUID, other: "vault"}),
            w.mem["secret"], ABSENT_UUID)
    resp = w.b.http.post("/v1/brain/plan", json={"from": "vault code", "to": "boiler",
                                                  "namespace": w.a_ns})
    assert resp.status_code in (200, 404), resp.text
    no_secret(w, resp)


# personas and sessions

@attempt("personas: GET /v1/personas/{A hash | A name}, list, list ?name=")
def _(w: World) -> None:
    for ref, absent in ((w.persona["hash"], ABSENT_HASH), ("a-helper", "no-such-persona")):
        same_as_absent(w.b.http.get(f"/v1/personas/{ref}"), w.b.http.get(f"/v1/personas/{absent}"),
                       ref, absent)
    listed = w.b.personas(limit=1000)["items"]
    assert {p["tenant"] for p in listed} == {w.b_name} and w.b_persona in listed
    no_secret(w, listed)
    assert w.b.personas(name="a-helper")["items"] == []


@attempt("personas: POST /v1/personas with A's exact document makes B's own row")
def _(w: World) -> None:
    doc = {k: w.plain_persona[k] for k in ("name", "system_prompt", "providers", "tools", "namespace")}
    same = w.b.http.post("/v1/personas", json=doc)
    assert same.status_code == 201, same.text  # created: A's row does not count as B's
    assert same.json()["hash"] == w.plain_persona["hash"] and same.json()["tenant"] == w.b_name
    assert w.a.personas(limit=1000) == w.before["personas"]


@attempt("sessions: POST /v1/session/mint with A's persona hash")
def _(w: World) -> None:
    body = {"policy_hash": "p", "budgets": {"tokens": 10, "tools_per_min": 1}, "ttl_s": 60}
    same_as_absent(w.b.http.post("/v1/session/mint", json={**body, "persona_hash": w.persona["hash"]}),
                   w.b.http.post("/v1/session/mint", json={**body, "persona_hash": ABSENT_HASH}),
                   w.persona["hash"], ABSENT_HASH)


@attempt("sessions: POST /v1/session/mint with tenant=A (documented 403, same for no tenant)")
def _(w: World) -> None:
    body = {"persona_hash": w.b_persona["hash"], "policy_hash": "p",
            "budgets": {"tokens": 10, "tools_per_min": 1}, "ttl_s": 60}
    same_as_absent(w.b.http.post("/v1/session/mint", json={**body, "tenant": w.a_name}),
                   w.b.http.post("/v1/session/mint", json={**body, "tenant": ABSENT_TENANT}),
                   w.a_name, ABSENT_TENANT, status=403)


@attempt("sessions: POST /v1/session/revoke of A's jti")
def _(w: World) -> None:
    same_as_absent(w.b.http.post("/v1/session/revoke", json={"jti": w.session["jti"]}),
                   w.b.http.post("/v1/session/revoke", json={"jti": ABSENT_JTI}),
                   w.session["jti"], ABSENT_JTI)
    assert w.a_jwt.http.get("/v1/turns").status_code == 200  # A's token still works


@attempt("turns: POST /v1/turn with B's token naming A's session id")
def _(w: World) -> None:
    def post(session_id: str) -> httpx.Response:
        return w.b_jwt.http.post("/v1/turn", json={"session_id": session_id,
                                                    "inputs": {"text": TURN_TEXT}})
    same_as_absent(post(w.session["jti"]), post(ABSENT_JTI), w.session["jti"], ABSENT_JTI)


# turns

@attempt("turns: GET /v1/turns/{A turn id}")
def _(w: World) -> None:
    same_as_absent(w.b.http.get(f"/v1/turns/{w.turn_id}"), w.b.http.get(f"/v1/turns/{ABSENT_TURN}"),
                   w.turn_id, ABSENT_TURN)
    same_as_absent(w.b_jwt.http.get(f"/v1/turns/{w.turn_id}"),
                   w.b_jwt.http.get(f"/v1/turns/{ABSENT_TURN}"), w.turn_id, ABSENT_TURN)


@attempt("turns: GET /v1/turns/{A turn id}/events (plain, ?after=0, Last-Event-ID)")
def _(w: World) -> None:
    for headers, params in (({}, {}), ({}, {"after": 0}),
                            ({"Last-Event-ID": f"{w.turn_id}:0"}, {})):
        got = w.b.http.get(f"/v1/turns/{w.turn_id}/events", headers=headers, params=params, timeout=30)
        absent_headers = {k: v.replace(w.turn_id, ABSENT_TURN) for k, v in headers.items()}
        control = w.b.http.get(f"/v1/turns/{ABSENT_TURN}/events", headers=absent_headers,
                               params=params, timeout=30)
        same_as_absent(got, control, w.turn_id, ABSENT_TURN)


@attempt("turns: B's own turn's events with Last-Event-ID of A's turn")
def _(w: World) -> None:
    mine = w.b_turn_header
    got = w.b.http.get(f"/v1/turns/{mine}/events", headers={"Last-Event-ID": f"{w.turn_id}:0"},
                       timeout=30)
    control = w.b.http.get(f"/v1/turns/{mine}/events", headers={"Last-Event-ID": f"{ABSENT_TURN}:0"},
                           timeout=30)
    same_as_absent(got, control, w.turn_id, ABSENT_TURN, status=422)


@attempt("turns: POST /v1/turn resuming A's turn with Last-Event-ID")
def _(w: World) -> None:
    def post(event_id: str) -> httpx.Response:
        return w.b_jwt.http.post("/v1/turn", json={"session_id": w.b_session["jti"],
                                                    "inputs": {"text": TURN_TEXT}},
                                 headers={"Last-Event-ID": event_id}, timeout=30)
    same_as_absent(post(f"{w.turn_id}:0"), post(f"{ABSENT_TURN}:0"), w.turn_id, ABSENT_TURN)


@attempt("turns: POST /v1/turn replaying A's Idempotency-Key runs B's own turn")
def _(w: World) -> None:
    events = w.b_turn_events
    assert w.b_turn_header != w.turn_id and events
    assert {e["turn_id"] for e in events} == {w.b_turn_header}
    assert events[0]["type"] == "recall" and not set(events[0]["data"]["ids"]) & w.a_ids
    assert w.before["turn"]["events"][-1] != events[-1]
    no_secret(w, events)
    mine = w.b.get_turn(w.b_turn_header)
    assert mine["session_id"] == w.b_session["jti"] and mine["persona_hash"] == w.b_persona["hash"]


@attempt("turns: GET /v1/turns (key and token; ?session_id=A's jti)")
def _(w: World) -> None:
    for c in (w.b, w.b_jwt):
        for params in ({}, {"session_id": w.session["jti"]}, {"limit": 100}):
            resp = c.http.get("/v1/turns", params=params)
            assert resp.status_code == 200, resp.text
            assert w.turn_id not in resp.text and w.session["jti"] not in [
                t["session_id"] for t in resp.json()["items"]]
            assert {t["id"] for t in resp.json()["items"]} <= {w.b_turn_header}
    assert w.b.turns(session_id=w.session["jti"])["items"] == []


# usage, audit, outbox

@attempt("usage: GET /v1/usage (total, by session and agent) holds only B's own turn")
def _(w: World) -> None:
    b_tokens = w.b_turn_events[-1]["data"]["tokens"]
    total = w.b.usage()["rows"]
    assert [r["tokens"] for r in total] == [b_tokens]
    rows = w.b.usage(group_by=["session", "agent"])["rows"]
    assert [(r["session"], r["agent"]) for r in rows] == [(w.b_session["jti"], "b-helper")]
    assert w.session["jti"] not in json.dumps(rows)


@attempt("audit: GET /v1/audit lists only B's rows, none by A's actors or holding A's content")
def _(w: World) -> None:
    rows = every_audit_row(w.b)
    assert rows and {r["tenant_id"] for r in rows} == {w.b_name}
    assert not {r["actor"] for r in rows} & w.a_actors
    no_secret(w, rows, ids=False)  # B's own denied requests may echo the ids B sent
    for actor in sorted(w.a_actors):
        assert w.b.request("GET", "/v1/audit", params={"actor": actor})["items"] == []
    assert w.b.request("GET", "/v1/audit", params={"action": "persona.create", "limit": 1000}
                       )["items"][0]["tenant_id"] == w.b_name


@attempt("audit: GET /v1/audit?tenant=A (documented 403, same for no tenant)")
def _(w: World) -> None:
    same_as_absent(w.b.http.get("/v1/audit", params={"tenant": w.a_name}),
                   w.b.http.get("/v1/audit", params={"tenant": ABSENT_TENANT}),
                   w.a_name, ABSENT_TENANT, status=403)


@attempt("audit+outbox: platform-only routes (verify, outbox status, replay) refuse B")
def _(w: World) -> None:
    for method, path, body in (("GET", "/v1/audit/verify", None), ("GET", "/v1/outbox/status", None),
                               ("POST", "/v1/outbox/replay", {"dead_only": False})):
        resp = w.b.http.request(method, path, json=body)
        assert resp.status_code == 403 and resp.json()["field"] == "Authorization", resp.text


# policy, keys, tenants

@attempt("policy: GET/DELETE /v1/policy as B never touches A's override; B's own does not bind A")
def _(w: World) -> None:
    assert w.b.request("GET", "/v1/policy")["override"] is None
    assert w.b.http.delete("/v1/policy").status_code == 404
    w.b.request("PUT", "/v1/policy", json={"module": (
        'package soma.tenant\nimport rego.v1\ndeny contains "B forbids all writes" if '
        'input.action == "memory.write"\n')})
    try:
        check = w.a.request("POST", "/v1/policy/check",
                            json={"action": "memory.write", "resource": {"namespace": SHARED_NS}})
        assert check["allow"] is True, check
    finally:
        assert w.b.http.delete("/v1/policy").status_code == 204
    assert w.a.request("GET", "/v1/policy") == w.before["policy"]


@attempt("policy: A's override neither binds B nor shows B its reasons")
def _(w: World) -> None:
    check = w.b.request("POST", "/v1/policy/check",
                        json={"action": "memory.write", "resource": {"namespace": LOCKED_NS}})
    assert check["allow"] is True and w.secret not in json.dumps(check)
    assert w.b.remember("B writes here freely", namespace=LOCKED_NS)["status"] == "created"


@attempt("keys: GET /v1/keys, DELETE /v1/keys/{A key id}, POST /v1/keys naming A")
def _(w: World) -> None:
    listed = w.b.request("GET", "/v1/keys")
    assert {k["tenant_id"] for k in listed} == {w.b_name}
    assert not {k["id"] for k in listed} & {w.key["id"], w.a_admin_key_id}
    for kid in (w.key["id"], w.a_admin_key_id):
        same_as_absent(w.b.http.delete(f"/v1/keys/{kid}"), w.b.http.delete(f"/v1/keys/{ABSENT_KEY_ID}"),
                       kid, ABSENT_KEY_ID)
    resp = w.b.http.post("/v1/keys", json={"name": "x", "scopes": ["admin"], "tenant_id": w.a_name})
    assert resp.status_code == 422 and resp.json()["field"] == "tenant_id"
    resp = w.b.http.post(f"/v1/tenants/{w.a_name}/keys", json={"name": "x", "scopes": ["admin"]})
    assert resp.status_code == 403 and resp.json()["field"] == "Authorization"


@attempt("tenants: GET /v1/tenants/{A}, list, disable/enable A")
def _(w: World) -> None:
    same_as_absent(w.b.http.get(f"/v1/tenants/{w.a_name}"), w.b.http.get(f"/v1/tenants/{ABSENT_TENANT}"),
                   w.a_name, ABSENT_TENANT)
    assert w.b.request("GET", f"/v1/tenants/{w.b_name}")["id"] == w.b_name
    for method, path in (("GET", "/v1/tenants"), ("POST", f"/v1/tenants/{w.a_name}/disable"),
                         ("POST", f"/v1/tenants/{w.a_name}/enable")):
        resp = w.b.http.request(method, path)
        assert resp.status_code == 403 and resp.json()["field"] == "Authorization", resp.text
    assert w.a.request("GET", f"/v1/tenants/{w.a_name}")["disabled_at"] is None


# X-Soma-Tenant naming the other tenant

HEADER_ROUTES = [("GET", "/v1/memory", None), ("POST", "/v1/memory/recall", {"query": "vault"}),
                 ("GET", "/v1/brain/weights", None), ("GET", "/v1/personas", None),
                 ("GET", "/v1/turns", None), ("GET", "/v1/usage", None), ("GET", "/v1/audit", None),
                 ("GET", "/v1/keys", None), ("GET", "/v1/policy", None)]


@attempt("header: B's key with X-Soma-Tenant: A on every kind of route (documented 403)")
def _(w: World) -> None:
    for method, path, body in HEADER_ROUTES:
        got = w.b.http.request(method, path, json=body, headers={"X-Soma-Tenant": w.a_name})
        control = w.b.http.request(method, path, json=body, headers={"X-Soma-Tenant": ABSENT_TENANT})
        same_as_absent(got, control, w.a_name, ABSENT_TENANT, status=403)
        assert got.json()["field"] == "X-Soma-Tenant"
        no_secret(w, got)
        own = w.b.http.request(method, path, json=body, headers={"X-Soma-Tenant": w.b_name})
        assert own.status_code == 200, f"{method} {path} as B naming B: {own.text}"


@attempt("header: B's session token with X-Soma-Tenant: A")
def _(w: World) -> None:
    for method, path, body in HEADER_ROUTES[:5]:
        got = w.b_jwt.http.request(method, path, json=body, headers={"X-Soma-Tenant": w.a_name})
        assert got.status_code == 403 and got.json()["field"] == "X-Soma-Tenant", got.text
        no_secret(w, got)


# A's session token turned against B

@attempt("A's token: B's memory by id, B's memories in listings and recall")
def _(w: World) -> None:
    same_as_absent(w.a_jwt.http.get(f"/v1/memory/{w.b_mem[0]}"),
                   w.a_jwt.http.get(f"/v1/memory/{ABSENT_UUID}"), w.b_mem[0], ABSENT_UUID)
    same_as_absent(w.a_jwt.http.get(f"/v1/memory/{w.b_mem[0]}/links"),
                   w.a_jwt.http.get(f"/v1/memory/{ABSENT_UUID}/links"), w.b_mem[0], ABSENT_UUID)
    listed = w.a_jwt.list(namespace=SHARED_NS, limit=1000)["items"]
    assert ids_of(listed) <= w.a_ids and not ids_of(listed) & set(w.b_mem)
    hits = w.a_jwt.recall("quartz basement lunch", namespace=SHARED_NS, top_k=100)["evidence"]
    assert not {e["memory"]["id"] for e in hits} & set(w.b_mem)


@attempt("A's token: B's turn, its events, B's session id, resuming B's turn, B's persona")
def _(w: World) -> None:
    b_turn = w.b_turn_header
    same_as_absent(w.a_jwt.http.get(f"/v1/turns/{b_turn}"),
                   w.a_jwt.http.get(f"/v1/turns/{ABSENT_TURN}"), b_turn, ABSENT_TURN)
    same_as_absent(w.a_jwt.http.get(f"/v1/turns/{b_turn}/events", timeout=30),
                   w.a_jwt.http.get(f"/v1/turns/{ABSENT_TURN}/events", timeout=30), b_turn, ABSENT_TURN)
    assert {t["id"] for t in w.a_jwt.turns(limit=100)["items"]} == {w.turn_id}

    def post(session_id: str, headers: dict[str, str]) -> httpx.Response:
        return w.a_jwt.http.post("/v1/turn", json={"session_id": session_id,
                                                    "inputs": {"text": TURN_TEXT}},
                                 headers=headers, timeout=30)
    same_as_absent(post(w.b_session["jti"], {}), post(ABSENT_JTI, {}), w.b_session["jti"], ABSENT_JTI)
    same_as_absent(post(w.session["jti"], {"Last-Event-ID": f"{b_turn}:0"}),
                   post(w.session["jti"], {"Last-Event-ID": f"{ABSENT_TURN}:0"}), b_turn, ABSENT_TURN)
    same_as_absent(w.a_jwt.http.get(f"/v1/personas/{w.b_persona['hash']}"),
                   w.a_jwt.http.get(f"/v1/personas/{ABSENT_HASH}"), w.b_persona["hash"], ABSENT_HASH)


@attempt("A's token: B's working memory, B's session revoke, usage and keys")
def _(w: World) -> None:
    out = w.a_jwt.evaluate(w.wm_session, "B was here", include_working_memory=True)
    assert all(not i["content"].startswith("B-OBS") for i in out["working_memory"])
    assert not ids_of(out["memories"]) & set(w.b_mem)
    for method, path, body in (("POST", "/v1/session/revoke", {"jti": w.b_session["jti"]}),
                               ("GET", "/v1/usage", None), ("GET", "/v1/keys", None),
                               ("GET", "/v1/audit", None)):
        resp = w.a_jwt.http.request(method, path, json=body)
        assert resp.status_code == 403 and resp.json()["field"] == "Authorization", resp.text
    assert w.b_jwt.http.get("/v1/turns").status_code == 200  # B's token still works


@pytest.mark.parametrize("act", ATTEMPTS)
def test_b_cannot_reach_a(world: World, act: Callable[[World], None]) -> None:
    act(world)


# ---- afterwards -------------------------------------------------------------------------------

def test_a_is_unchanged_after_every_attempt(world: World, server: str) -> None:
    """Runs after the attempts (file order): A's state is exactly as before, its credentials work."""
    w = world
    now = snapshot(w)
    for part, value in w.before.items():
        assert now[part] == value, f"A's {part} changed"
    audit = every_audit_row(w.a)
    assert audit[:len(w.audit_before)] == w.audit_before
    assert {r["tenant_id"] for r in audit} == {w.a_name}
    assert not {r["actor"] for r in audit} & w.b_actors
    wm = w.a.evaluate(w.wm_session, "courier", include_working_memory=True)["working_memory"]
    contents = [i["content"] for i in wm]
    assert any(c.startswith("A-OBS") for c in contents) and not any(c.startswith("B-OBS") for c in contents)
    assert w.a_jwt.get_turn(w.turn_id)["status"] == "done"  # A's session is still valid
    with Client(server, api_key=w.key_secret) as reader:  # A's new key still works
        assert ids_of(reader.list(limit=1000)["items"]) == w.a_ids


def test_no_attempt_met_a_server_error(world: World) -> None:
    assert world.server_errors == []


def test_b_cannot_infer_another_tenants_memory_count_from_metrics(
        world: World, server: str, tenant_key: Callable[[str], str | None]) -> None:
    victim = tenant_key(f"iso-c-{uuid.uuid4().hex[:8]}")
    assert victim

    def stored() -> float | None:
        resp = world.b.http.get("/metrics")
        if resp.status_code in (401, 403, 404):
            return None
        found = re.search(r"^soma_memories_stored (\S+)$", resp.text, re.MULTILINE)
        assert found, resp.text[:500]
        return float(found.group(1))

    before = stored()
    with Client(server, api_key=victim) as c:
        c.remember_batch([{"content": f"C's private note {i}"} for i in range(3)], namespace="c")
    after = stored()
    assert before is None or after == before, f"B saw the count of all memories go {before} -> {after}"
