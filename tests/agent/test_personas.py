"""Personas on the real PostgreSQL and API: hashed, idempotent, validated, per tenant, minted for."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal

import psycopg
import pytest

from somastack import Client, SomaAPIError
from somastack.agent.personas import get_persona, list_personas, persona_hash, put_persona
from somastack.errors import InvalidInput, NotFound
from somastack.governance.canonical import canonical_json
from somastack.store import Database

DOC = {"name": "helper", "system_prompt": "You are a careful assistant.",
       "providers": ["openai", "local"], "tools": ["memory.recall", "http.fetch"],
       "namespace": "helper-notes"}
MINT = {"policy_hash": "sha3:policy", "budgets": {"tokens": 5000, "tools_per_min": 10,
                                                   "cost_cents": 25}, "ttl_s": 600}


def test_hash_is_sha256_of_the_canonical_normalised_document() -> None:
    normalised = {**DOC, "tools": ["http.fetch", "memory.recall"]}  # tools are a set: sorted
    assert persona_hash(DOC) == hashlib.sha256(canonical_json(normalised)).hexdigest()
    assert persona_hash({**DOC, "tools": ["http.fetch", "memory.recall", "http.fetch"]}) == \
        persona_hash(DOC)
    assert persona_hash({**DOC, "providers": ["local", "openai"]}) != persona_hash(DOC)  # a chain
    minimal = {"name": "m", "system_prompt": "x"}
    assert persona_hash(minimal) == persona_hash(
        {**minimal, "providers": ["local"], "tools": [], "namespace": "default"}) == \
        persona_hash({**minimal, "providers": None, "tools": None, "namespace": None})


@pytest.mark.parametrize(("change", "field"), [
    ({"name": "Has Caps"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "a" * 64}, "name"),  # 64 hex digits would read as a hash
    ({"name": None}, "name"),
    ({"system_prompt": ""}, "system_prompt"),
    ({"system_prompt": "x" * 8001}, "system_prompt"),
    ({"system_prompt": 3}, "system_prompt"),
    ({"providers": []}, "providers"),
    ({"providers": ["local", "gemini"]}, "providers[1]"),
    ({"providers": "local"}, "providers"),
    ({"tools": ["Not A Tool"]}, "tools[0]"),
    ({"tools": ["ok", "x" * 129]}, "tools[1]"),
    ({"namespace": ""}, "namespace"),
    ({"namespace": "n" * 65}, "namespace"),
    ({"namespace": "-leading"}, "namespace"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_documents_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        persona_hash({**DOC, **change})
    assert e.value.field == field


@pytest.mark.asyncio
async def test_put_get_list_versions_and_isolation(database: Database, tenant: str,
                                                   database_url: str) -> None:
    first = await put_persona(database, tenant, DOC, "key:test")
    again = await put_persona(database, tenant, dict(DOC), "key:other")
    assert again == first and first.hash == persona_hash(DOC) and first.created_at is not None
    assert first.doc() == {**DOC, "tools": ["http.fetch", "memory.recall"]}
    newer = await put_persona(database, tenant, {**DOC, "system_prompt": "Be terse."}, "key:test")
    other = await put_persona(database, tenant, {"name": "critic", "system_prompt": "Find flaws."},
                              "key:test")
    assert (other.providers, other.tools, other.namespace) == (["local"], [], "default")

    assert (await get_persona(database, tenant, first.hash)).system_prompt == DOC["system_prompt"]
    assert (await get_persona(database, tenant, "helper")).hash == newer.hash  # newest version
    with pytest.raises(NotFound) as e:
        await get_persona(database, tenant, "nobody")
    assert e.value.field == "persona"

    page, cursor = await list_personas(database, tenant, 2, None)
    assert [p.hash for p in page] == [first.hash, newer.hash] and cursor
    rest, end = await list_personas(database, tenant, 2, cursor)
    assert [p.hash for p in rest] == [other.hash] and end is None
    versions, _ = await list_personas(database, tenant, 10, None, name="helper")
    assert [p.hash for p in versions] == [first.hash, newer.hash]
    with pytest.raises(InvalidInput) as e:
        await list_personas(database, tenant, 10, "not-a-cursor")
    assert e.value.field == "cursor"

    stranger = f"t-{uuid.uuid4().hex[:12]}"
    for ref in (first.hash, "helper"):
        with pytest.raises(NotFound):
            await get_persona(database, stranger, ref)
    assert await list_personas(database, stranger, 10, None) == ([], None)
    with psycopg.connect(database_url) as conn:  # row-level security: the second wall
        conn.execute("SELECT set_config('role', 'soma_app', true), "
                     "set_config('app.tenant_id', %s, true)", (stranger,))
        assert conn.execute("SELECT count(*) FROM personas WHERE tenant_id = %s",
                            (tenant,)).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO personas (tenant_id, hash, name, doc, created_by) "
                         "VALUES (%s, %s, 'forged', '{}', 'x')", (tenant, "0" * 64))


def test_api_create_is_idempotent_audited_and_readable(client: Client, tenant: str,
                                                       db: psycopg.Connection) -> None:
    resp = client.http.post("/v1/personas", json=DOC)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["hash"] == persona_hash(DOC) and created["tenant"] == tenant
    assert created["tools"] == ["http.fetch", "memory.recall"]
    again = client.http.post("/v1/personas", json=DOC)
    assert again.status_code == 200 and again.json() == created
    assert client.persona(created["hash"]) == created == client.persona("helper")
    newer = client.create_persona("helper", "Be terse.")
    assert client.persona("helper")["hash"] == newer["hash"] != created["hash"]
    page = client.personas(limit=1)
    assert [p["hash"] for p in page["items"]] == [created["hash"]] and page["next_cursor"]
    assert [p["hash"] for p in client.personas(cursor=page["next_cursor"])["items"]] == [
        newer["hash"]]
    rows = db.execute("SELECT resource FROM audit_log WHERE tenant_id = %s AND action = "
                      "'persona.create' ORDER BY seq", (tenant,)).fetchall()
    assert rows == [(f"persona:{created['hash']}",), (f"persona:{newer['hash']}",)]


@pytest.mark.parametrize(("body", "field"), [
    ({"system_prompt": "x"}, "name"),
    ({**DOC, "name": "UPPER"}, "name"),
    ({**DOC, "system_prompt": "x" * 8001}, "system_prompt"),
    ({**DOC, "providers": []}, "providers"),
    ({**DOC, "providers": ["local", "bard"]}, "providers[1]"),
    ({**DOC, "tools": ["ok", "rm -rf"]}, "tools[1]"),
    ({**DOC, "namespace": "bad namespace"}, "namespace"),
    ({**DOC, "extra": 1}, "extra"),
])
def test_api_bad_input_is_422_naming_the_field_and_writes_nothing(
        client: Client, tenant: str, db: psycopg.Connection, body: dict, field: str) -> None:
    resp = client.http.post("/v1/personas", json=body)
    assert resp.status_code == 422 and resp.json()["field"] == field, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert db.execute("SELECT count(*) FROM personas WHERE tenant_id = %s",
                      (tenant,)).fetchone() == (0,)
    bad_ref = client.http.get("/v1/personas/Not%20A%20Ref")
    assert bad_ref.status_code == 422 and bad_ref.json()["field"] == "ref"


def test_tenant_b_cannot_see_tenant_a_personas(make_client: Callable[[str | None], Client]) -> None:
    a, b = make_client(f"pa-{uuid.uuid4().hex[:8]}"), make_client(f"pb-{uuid.uuid4().hex[:8]}")
    mine = a.create_persona(**DOC)
    for ref in (mine["hash"], "helper"):
        with pytest.raises(SomaAPIError) as e:
            b.persona(ref)
        assert (e.value.status, e.value.field) == (404, "persona")
    assert b.personas() == {"items": [], "next_cursor": None}
    resp = b.http.post("/v1/session/mint", json={**MINT, "persona_hash": mine["hash"]})
    assert resp.status_code == 404 and resp.json()["field"] == "persona_hash"
    same = b.create_persona(**DOC)  # the same document in B: the same hash, B's own row
    assert same["hash"] == mine["hash"] and same["tenant"] != mine["tenant"]


def test_scopes_for_writing_and_reading(server: str, client: Client, tenant: str,
                                        admin_key: str) -> None:
    client.create_persona(**DOC)
    with Client(server, api_key=admin_key) as platform:
        keys = {scopes: platform.request("POST", f"/v1/tenants/{tenant}/keys",
                                         json={"name": scopes, "scopes": scopes.split()})["key"]
                for scopes in ("memory:read", "agent:run")}
    with Client(server, api_key=keys["memory:read"]) as c:
        assert c.http.get("/v1/personas/helper").status_code == 403
    with Client(server, api_key=keys["agent:run"]) as c:
        assert c.persona("helper")["name"] == "helper"
        resp = c.http.post("/v1/personas", json={**DOC, "name": "intruder"})
        assert resp.status_code == 403


def test_mint_needs_a_persona_of_the_tenant_and_budgets_the_session(
        server: str, client: Client, tenant: str, db: psycopg.Connection) -> None:
    def rows(table: str) -> int:
        row = db.execute(f"SELECT count(*) FROM {table} WHERE tenant_id = %s", (tenant,)).fetchone()
        return int(row[0]) if row else 0

    for ref in ("0" * 64, "helper", "sha3:persona"):
        resp = client.http.post("/v1/session/mint", json={**MINT, "persona_hash": ref})
        assert resp.status_code == 404 and resp.json()["field"] == "persona_hash", resp.text
    assert (rows("session_tokens"), rows("budgets")) == (0, 0)  # nothing half-minted
    denied = db.execute("SELECT count(*) FROM audit_log WHERE tenant_id = %s AND "
                        "action = 'session.mint' AND decision = 'deny'", (tenant,)).fetchone()
    assert denied == (3,)

    helper = client.create_persona(**DOC)
    client.create_persona("critic", "Find flaws.")
    out = client.request("POST", "/v1/session/mint", json={**MINT, "persona_hash": helper["hash"]})
    assert out["session_id"] == out["jti"]
    budget = db.execute(
        "SELECT limit_tokens, limit_cost_cents, limit_tool_calls, spent_tokens FROM budgets "
        "WHERE tenant_id = %s AND scope = %s", (tenant, f"session:{out['jti']}")).fetchone()
    assert budget == (5000, Decimal(25), None, 0)
    no_cost = client.request("POST", "/v1/session/mint", json={
        **MINT, "budgets": {"tokens": 7, "tools_per_min": 1}, "persona_hash": helper["hash"]})
    assert db.execute("SELECT limit_tokens, limit_cost_cents FROM budgets WHERE tenant_id = %s "
                      "AND scope = %s", (tenant, f"session:{no_cost['jti']}")).fetchone() == (7, None)

    with Client(server, api_key=out["jwt"]) as session:  # a session reads its own persona only
        assert session.persona(helper["hash"]) == helper == session.persona("helper")
        assert session.personas()["items"] == [helper]
        with pytest.raises(SomaAPIError) as e:
            session.persona("critic")
        assert e.value.status == 404
        assert session.http.post("/v1/personas", json={**DOC, "name": "x"}).status_code == 403


def soma(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "somastack.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_persona_cli(cli_env: dict[str, str]) -> None:
    made = soma(cli_env, "persona", "create", "--name", "helper", "--system-prompt", "Be kind.",
                "--provider", "openai", "--provider", "local", "--tool", "memory.recall",
                "--namespace", "notes", "--json")
    assert made.returncode == 0, made.stderr
    persona = json.loads(made.stdout)
    assert persona["providers"] == ["openai", "local"] and persona["namespace"] == "notes"
    plain = soma(cli_env, "persona", "create", "--name", "helper", "--system-prompt", "Be kind.",
                 "--provider", "openai", "--provider", "local", "--tool", "memory.recall",
                 "--namespace", "notes")
    assert plain.stdout.split() == ["persona", "helper", persona["hash"]]
    listed = json.loads(soma(cli_env, "persona", "list", "--json").stdout)
    assert [p["hash"] for p in listed["items"]] == [persona["hash"]]
    assert "helper" in soma(cli_env, "persona", "list").stdout
    assert json.loads(soma(cli_env, "persona", "show", "helper", "--json").stdout) == persona
    assert "Be kind." in soma(cli_env, "persona", "show", persona["hash"]).stdout
    bad = soma(cli_env, "persona", "create", "--name", "x", "--system-prompt", "y",
               "--provider", "gemini")
    assert bad.returncode == 1 and "providers[0]" in bad.stderr
    missing = soma(cli_env, "persona", "show", "nobody")
    assert missing.returncode == 1 and "404" in missing.stderr
