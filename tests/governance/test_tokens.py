"""Session tokens: EdDSA JWTs with kid rotation, JWKS, jti revocation, and every forgery refused."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from tests.governance.conftest import audit_rows

from somastack import Client, SomaAPIError
from somastack.agent.personas import persona_hash

PERSONA = {"name": "tester", "system_prompt": "You test session tokens."}
BODY = {"persona_hash": persona_hash(PERSONA), "policy_hash": "sha3:policy",
        "budgets": {"tokens": 1000, "tools_per_min": 10}, "allow": {"memory": "readwrite"},
        "ttl_s": 600}


def mint(c: Client, **over: object) -> dict:
    return c.request("POST", "/v1/session/mint", json={**BODY, **over})


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def refused(server: str, token: str) -> tuple[int, str]:
    with Client(server, api_key=token) as c:
        resp = c.http.post("/v1/memory/recall", json={"query": "x"})
    return resp.status_code, resp.json().get("detail", "")


@pytest.fixture
def owner(make_client: Callable[[str | None], Client]) -> Client:
    """An admin client of a new tenant that has the persona BODY mints for."""
    c = make_client(f"tok-{uuid.uuid4().hex[:8]}")
    c.create_persona(**PERSONA)
    return c


def test_token_carries_claims_and_acts_for_its_tenant_only(server: str, owner: Client) -> None:
    out = mint(owner, allow={"memory": "read", "tools": ["search"]})
    assert out["expires_in"] == 600 and out["jwt"].count(".") == 2
    claims = jwt.decode(out["jwt"], options={"verify_signature": False})
    assert claims["scp"] == ["agent:run", "memory:read"] and claims["allow"]["tools"] == ["search"]
    assert len(claims["cst"]) == 128 and claims["budgets"] == {"tokens": 1000, "tools_per_min": 10}
    assert jwt.get_unverified_header(out["jwt"]) == {"alg": "EdDSA", "kid": out["kid"], "typ": "JWT"}
    owner.remember("owner's memory")
    with Client(server, api_key=out["jwt"]) as session:
        assert [e["memory"]["content"] for e in session.recall("memory")["evidence"]] == [
            "owner's memory"]
        with pytest.raises(SomaAPIError) as e:
            session.remember("a read-only session cannot write")
        assert e.value.status == 403
        with pytest.raises(SomaAPIError) as e:  # tokens never mint tokens
            mint(session)
        assert e.value.status == 403


def test_mint_bad_input_and_ceilings(owner: Client, server: str, admin: Client) -> None:
    for over, status, field in (({"ttl_s": 10**7}, 422, "ttl_s"),
                                ({"budgets": {"tokens": 10**12, "tools_per_min": 1}}, 422, "budgets.tokens"),
                                ({"allow": {"memory": "everything"}}, 422, "allow.memory"),
                                ({"persona_hash": ""}, 422, "persona_hash"),
                                ({"tenant": "someone-else"}, 403, "tenant")):
        resp = owner.http.post("/v1/session/mint", json={**BODY, **over})
        assert (resp.status_code, resp.json()["field"]) == (status, field), resp.text
    reader = admin.request("POST", f"/v1/tenants/{owner.http.headers['X-Soma-Tenant']}/keys",
                           json={"name": "r", "scopes": ["session:mint", "memory:read"]})["key"]
    with Client(server, api_key=reader) as c:
        resp = c.http.post("/v1/session/mint", json=BODY)  # readwrite needs memory:write
        assert resp.status_code == 403 and resp.json()["field"] == "allow.memory"


def test_forged_tokens_are_refused_and_audited(server: str, owner: Client, db: psycopg.Connection
                                              ) -> None:
    real = mint(owner)
    header, payload, signature = real["jwt"].split(".")
    claims = jwt.decode(real["jwt"], options={"verify_signature": False})
    other_key = Ed25519PrivateKey.generate()
    attacks = {
        "edited claims": (f"{header}.{b64({**claims, 'ten': 'default'})}.{signature}", "signature"),
        "alg none": (f"{b64({'alg': 'none', 'kid': real['kid']})}.{payload}.", "'none'"),
        "HS256 with the public key": (jwt.encode(claims, "k" * 32, algorithm="HS256",
                                                 headers={"kid": real["kid"]}), "'HS256'"),
        "own key, real kid": (jwt.encode(claims, other_key, algorithm="EdDSA",
                                         headers={"kid": real["kid"]}), "signature"),
        "own key, own kid": (jwt.encode(claims, other_key, algorithm="EdDSA", headers={"kid": "k-evil"}),
                             "unknown signing key"),
        "no kid": (jwt.encode(claims, other_key, algorithm="EdDSA"), "no kid"),
        "garbage": ("a.b.c", "malformed"),
    }
    for name, (token, words) in attacks.items():
        status, detail = refused(server, token)
        assert status == 401 and words in detail, (name, detail)
    reasons = " ".join(r[2] for r in audit_rows(db, action="auth.deny"))
    assert "signature is not valid" in reasons and "unknown signing key id 'k-evil'" in reasons


def test_expired_and_revoked_tokens_are_refused(server: str, owner: Client,
                                                make_client: Callable[[str | None], Client],
                                                db: psycopg.Connection) -> None:
    minted = time.time()
    short = mint(owner, ttl_s=3)
    assert refused(server, short["jwt"])[0] == 200  # verified and remembered: until it expires
    revoked = mint(owner)
    assert refused(server, revoked["jwt"])[0] == 200
    stranger = make_client(f"tok-{uuid.uuid4().hex[:8]}")
    resp = stranger.http.post("/v1/session/revoke", json={"jti": revoked["jti"]})
    assert resp.status_code == 404  # another tenant's token is not yours to revoke
    assert owner.request("POST", "/v1/session/revoke", json={"jti": revoked["jti"]})["revoked_at"]
    assert refused(server, revoked["jwt"]) == (401, "Authorization: the session token was revoked")
    time.sleep(max(0.0, minted + 3 + 1.1 - time.time()))
    assert refused(server, short["jwt"]) == (401, "Authorization: the session token has expired")
    rows = audit_rows(db, action="session.revoke")
    assert rows and rows[-1][1] == "allow"


def test_disabled_tenant_invalidates_its_tokens(server: str, owner: Client, admin: Client) -> None:
    token = mint(owner)["jwt"]
    tenant = owner.http.headers["X-Soma-Tenant"]
    admin.request("POST", f"/v1/tenants/{tenant}/disable")
    try:
        status, detail = refused(server, token)
        assert status == 401 and "disabled" in detail
    finally:
        admin.request("POST", f"/v1/tenants/{tenant}/enable")


def test_rotation_keeps_old_tokens_valid_and_jwks_verifies_both(server: str, owner: Client,
                                                                admin: Client) -> None:
    before = mint(owner)
    rotated = admin.request("POST", "/v1/signing-keys/rotate")
    assert before["kid"] in rotated["retired"]
    after = mint(owner)
    assert after["kid"] == rotated["kid"] != before["kid"]
    jwks = admin.http.get("/.well-known/jwks.json").json()["keys"]
    by_kid = {k["kid"]: k for k in jwks}
    for token in (before, after):
        jwk = by_kid[token["kid"]]
        assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA"
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        claims = jwt.decode(token["jwt"], Ed25519PublicKey.from_public_bytes(raw), algorithms=["EdDSA"],
                            issuer="somastack")
        assert claims["jti"] == token["jti"]
        assert refused(server, token["jwt"])[0] == 200
    resp = owner.http.post("/v1/signing-keys/rotate")
    assert resp.status_code == 403
