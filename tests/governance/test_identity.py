"""Tenants, API keys and authentication of every /v1 endpoint (the tenant is the credential's)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import pytest
from tests.governance.conftest import audit_rows

from somastack import Client, SomaAPIError
from somastack.api.app import create_app


def new_tenant(admin: Client, **fields: object) -> str:
    tenant = f"g-{uuid.uuid4().hex[:10]}"
    admin.request("POST", "/v1/tenants", json={"id": tenant, **fields})
    return tenant


def key(admin: Client, tenant: str, *scopes: str) -> str:
    out = admin.request("POST", f"/v1/tenants/{tenant}/keys", json={"name": "t", "scopes": list(scopes)})
    return str(out["key"])


def test_every_v1_route_refuses_a_request_without_credentials(server: str, settings) -> None:
    paths = {p: ops for p, ops in create_app(settings).openapi()["paths"].items() if p.startswith("/v1")}
    assert len(paths) > 15
    with Client(server) as anon:
        for template, ops in paths.items():
            path = template.replace("{id}", str(uuid.uuid4())).replace("{tenant_id}", "x") \
                .replace("{key_id}", "x")
            for method in ops:
                resp = anon.http.request(method.upper(), path, json={})
                assert resp.status_code == 401, (method, path, resp.text)
                assert resp.json()["field"] == "Authorization"
                assert resp.headers["www-authenticate"].startswith("Bearer")


def test_key_is_shown_once_and_stored_hashed(admin: Client, db: psycopg.Connection) -> None:
    tenant = new_tenant(admin, name="Acme", plan="pro", limits={"rate": {"limit": 100}},
                        residency="eu")
    created = admin.request("POST", f"/v1/tenants/{tenant}/keys",
                            json={"name": "ci", "scopes": ["memory:read"]})
    secret = created["key"]
    assert secret.startswith("soma_") and created["scopes"] == ["memory:read"]
    stored = db.execute("SELECT secret_hash FROM api_keys WHERE id = %s", (created["id"],)).fetchone()
    assert stored and secret not in stored[0] and secret.split("_", 2)[2] not in stored[0]
    with Client(admin.http.base_url.__str__(), api_key=key(admin, tenant, "admin")) as owner:
        listed = owner.request("GET", "/v1/keys")
        assert {k["id"] for k in listed} >= {created["id"]} and all("key" not in k for k in listed)
        assert owner.request("GET", f"/v1/tenants/{tenant}")["plan"] == "pro"


def test_scopes_are_enforced_and_refusals_audited(server: str, admin: Client,
                                                  db: psycopg.Connection) -> None:
    tenant = new_tenant(admin)
    reader_key = key(admin, tenant, "memory:read")
    with Client(server, api_key=reader_key) as reader:
        assert reader.recall("anything")["evidence"] == []
        with pytest.raises(SomaAPIError) as e:
            reader.remember("not allowed")
        assert e.value.status == 403 and "memory:write" in str(e.value)
        for method, path, body in (("POST", "/v1/keys", {"name": "x", "scopes": ["admin"]}),
                                   ("POST", "/v1/tenants", {"id": "nope"}),
                                   ("GET", "/v1/audit", None)):
            resp = reader.http.request(method, path, json=body)
            assert resp.status_code == 403, (path, resp.text)
    assert db.execute("SELECT count(*) FROM memories WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    rows = audit_rows(db, tenant_id=tenant, action="scope.deny")
    assert len(rows) == 4 and all(r[1] == "deny" for r in rows)


def test_tenant_admin_cannot_escalate(server: str, admin: Client) -> None:
    tenant = new_tenant(admin)
    with Client(server, api_key=key(admin, tenant, "admin")) as owner:
        resp = owner.http.post("/v1/keys", json={"name": "x", "scopes": ["platform:admin"]})
        assert resp.status_code == 403 and resp.json()["field"] == "scopes[0]"
        resp = owner.http.post("/v1/keys", json={"name": "x", "scopes": ["memory:read", "root"]})
        assert resp.status_code == 422 and resp.json()["field"] == "scopes[1]"
        assert owner.http.get("/v1/tenants").status_code == 403
        other = new_tenant(admin)
        assert owner.http.get(f"/v1/tenants/{other}").status_code == 404


def test_revoked_key_and_disabled_tenant_stop_working(server: str, admin: Client,
                                                      db: psycopg.Connection) -> None:
    tenant = new_tenant(admin)
    owner_key, victim = key(admin, tenant, "admin"), admin.request(
        "POST", f"/v1/tenants/{tenant}/keys", json={"name": "v", "scopes": ["memory:write"]})
    with Client(server, api_key=victim["key"]) as c, Client(server, api_key=owner_key) as owner:
        c.remember("before revocation")
        assert owner.request("DELETE", f"/v1/keys/{victim['id']}")["revoked_at"]
        with pytest.raises(SomaAPIError) as e:
            c.remember("after revocation")
        assert e.value.status == 401 and "revoked" in str(e.value)
        admin.request("POST", f"/v1/tenants/{tenant}/disable")
        with pytest.raises(SomaAPIError) as e:
            owner.request("GET", "/v1/keys")
        assert e.value.status == 401 and "disabled" in str(e.value)
        admin.request("POST", f"/v1/tenants/{tenant}/enable")
        assert owner.request("GET", "/v1/keys")
    assert ("auth.deny", "deny", '["the API key was revoked"]') in audit_rows(db, action="auth.deny")


def test_another_tenants_key_cannot_be_revoked(server: str, admin: Client) -> None:
    a, b = new_tenant(admin), new_tenant(admin)
    b_key = admin.request("POST", f"/v1/tenants/{b}/keys", json={"name": "b", "scopes": ["admin"]})
    with Client(server, api_key=key(admin, a, "admin")) as a_admin:
        resp = a_admin.http.delete(f"/v1/keys/{b_key['id']}")
        assert resp.status_code == 404
    with Client(server, api_key=b_key["key"]) as b_admin:
        assert b_admin.request("GET", "/v1/keys")[0]["revoked_at"] is None


@pytest.mark.parametrize("header", ["Bearer", "Basic abc", "Bearer soma_nothex_x", "Bearer not.a.jwt",
                                    "Bearer soma_0123456789abcdef_" + "A" * 43])
def test_malformed_or_unknown_credentials_are_401(server: str, header: str) -> None:
    with Client(server) as c:
        resp = c.http.post("/v1/memory/recall", json={"query": "a"}, headers={"Authorization": header})
    assert resp.status_code == 401 and resp.json()["field"] == "Authorization", resp.text


def test_tenant_header_cannot_switch_tenant(server: str, admin: Client,
                                            make_client: Callable[[str | None], Client],
                                            db: psycopg.Connection) -> None:
    victim, attacker = new_tenant(admin), new_tenant(admin)
    make_client(victim).remember("victim's secret")
    with Client(server, tenant=victim, api_key=key(admin, attacker, "admin")) as c:
        resp = c.http.post("/v1/memory/recall", json={"query": "secret"})
        assert resp.status_code == 403 and resp.json()["field"] == "X-Soma-Tenant"
        # Even a platform admin's key does not act as another tenant through a header.
        resp = admin.http.post("/v1/memory/recall", json={"query": "secret"},
                               headers={"X-Soma-Tenant": victim})
        assert resp.status_code == 403
    assert audit_rows(db, tenant_id=attacker, action="auth.deny")


def test_tenant_create_bad_input(admin: Client) -> None:
    for body, field in (({"id": "has space"}, "id"), ({"id": "ok", "limits": []}, "limits"),
                        ({"id": "ok", "limits": {"rate": {"limit": "many"}}}, "limits"),
                        ({"id": "ok", "limits": {"rate": {"routes": {"GET /v1/memory": 0}}}}, "limits"),
                        ({"id": "ok", "colour": 1}, "colour")):
        resp = admin.http.post("/v1/tenants", json=body)
        assert resp.status_code == 422 and resp.json()["field"] == field, resp.text
    tenant = new_tenant(admin)
    resp = admin.http.post("/v1/tenants", json={"id": tenant})
    assert resp.status_code == 409 and resp.json()["field"] == "id"
