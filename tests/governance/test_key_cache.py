"""Verified API keys are remembered for a few seconds, and forgotten as soon as they change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg.rows import dict_row
from tests.governance.test_identity import key, new_tenant
from tests.governance.test_policy import READ_ONLY

from somastack import Client
from somastack.governance import audit, policy
from somastack.governance.keys import CACHE_TTL_S, VerifiedKeys
from somastack.governance.policy import Overrides
from somastack.governance.principal import Principal

T = TypeVar("T")


def principal(tenant: str) -> Principal:
    return Principal(tenant_id=tenant, actor="key:k", kind="api_key", scopes=frozenset({"admin"}))


def test_an_entry_serves_only_its_secret_and_only_until_its_ttl() -> None:
    cache = VerifiedKeys(ttl_s=0.2)
    cache.put("k1", "hash-a", principal("t1"), cache.epoch)
    assert cache.get("k1", "hash-a") == principal("t1")
    assert cache.get("k1", "hash-b") is None  # same id, another secret: not this entry
    time.sleep(0.25)
    assert cache.get("k1", "hash-a") is None


def test_a_read_from_before_a_change_is_not_stored() -> None:
    cache = VerifiedKeys()
    epoch = cache.epoch  # a lookup starts reading the database ...
    cache.on_change('{"action": "tenant.disable", "tenant_id": "t1", "resource": "tenant:t1"}')
    cache.put("k1", "hash-a", principal("t1"), epoch)  # ... and finishes after the announcement
    assert cache.get("k1", "hash-a") is None


def test_announcements_forget_the_key_or_the_whole_tenant() -> None:
    cache = VerifiedKeys()
    for key_id, tenant in (("k1", "t1"), ("k2", "t1"), ("k3", "t2")):
        cache.put(key_id, "h", principal(tenant), cache.epoch)
    cache.on_change('{"action": "key.revoke", "tenant_id": "t2", "resource": "key:k3"}')
    assert [cache.get(k, "h") is not None for k in ("k1", "k2", "k3")] == [True, True, False]
    cache.on_change('{"action": "tenant.disable", "tenant_id": "t1", "resource": "tenant:t1"}')
    assert [cache.get(k, "h") is not None for k in ("k1", "k2")] == [False, False]
    cache.put("k1", "h", principal("t1"), cache.epoch)
    cache.on_change(None)  # the listener reconnected: anything may have been missed
    assert cache.get("k1", "h") is None


def poll(ask: Callable[[], T], done: Callable[[T], bool], *, within_s: float,
         every_s: float = 0.02) -> T:
    """Ask until the answer is `done` or `within_s` has passed; the last answer."""
    deadline = time.monotonic() + within_s
    while not done(answer := ask()) and time.monotonic() < deadline:
        time.sleep(every_s)
    return answer


async def change_elsewhere(url: str, tenant: str, action: str, resource: str, sql: str,
                           params: tuple[object, ...]) -> None:
    """What another API process does to change a credential or policy: the change and its
    audit row (which announces it), one commit."""
    async with await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await conn.execute(sql, params)  # type: ignore[arg-type]
            await audit.append(conn, audit.AuditEvent(
                actor="key:elsewhere", tenant_id=tenant, action=action, resource=resource,
                decision="allow"))


async def revoke_elsewhere(url: str, tenant: str, key_id: str) -> None:
    await change_elsewhere(url, tenant, "key.revoke", f"key:{key_id}",
                           "UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))


def test_a_revocation_by_another_process_is_seen_well_within_the_ttl(
        server: str, admin: Client, database_url: str) -> None:
    tenant = new_tenant(admin)
    secret = key(admin, tenant, "memory:read")
    with Client(server, api_key=secret) as c:
        assert c.http.get("/v1/memory").status_code == 200  # verified, now remembered
        asyncio.run(revoke_elsewhere(database_url, tenant, secret.split("_")[1]))
        # the TTL is 5 s: only the announcement is this quick
        resp = poll(lambda: c.http.get("/v1/memory"), lambda r: r.status_code != 200, within_s=1.0)
        assert resp.status_code == 401 and "revoked" in resp.text


def test_an_unannounced_change_is_seen_after_the_ttl(server: str, admin: Client,
                                                      database_url: str) -> None:
    tenant = new_tenant(admin)
    secret = key(admin, tenant, "memory:read")
    with Client(server, api_key=secret) as c:
        assert c.http.get("/v1/memory").status_code == 200
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE tenants SET disabled_at = now() WHERE id = %s", (tenant,))
        assert c.http.get("/v1/memory").status_code == 200  # not announced: still remembered
        time.sleep(CACHE_TTL_S + 0.2)
        resp = c.http.get("/v1/memory")
        assert resp.status_code == 401 and "disabled" in resp.text


async def revoke_token_elsewhere(url: str, tenant: str, jti: str) -> None:
    """What another API process does for POST /v1/session/revoke."""
    await change_elsewhere(url, tenant, "session.revoke", f"token:{jti}",
                           "UPDATE session_tokens SET revoked_at = now() WHERE jti = %s", (jti,))


def test_session_tokens_are_remembered_and_forgotten_when_revoked_elsewhere(
        server: str, admin: Client, database_url: str) -> None:
    tenant = new_tenant(admin)
    with Client(server, api_key=key(admin, tenant, "admin")) as owner:
        persona = owner.create_persona("p", "Be brief.", tools=[], namespace="n")
        token = owner.mint_session(persona["hash"], memory="read")
    auth = {"Authorization": f"Bearer {token['jwt']}"}
    with Client(server) as c:
        assert c.http.get("/v1/turns", headers=auth).status_code == 200  # verified, remembered
        asyncio.run(revoke_token_elsewhere(database_url, tenant, token["jti"]))
        # the TTL is 5 s: only the announcement is this quick
        resp = poll(lambda: c.http.get("/v1/turns", headers=auth),
                    lambda r: r.status_code != 200, within_s=1.0)
        assert resp.status_code == 401 and "revoked" in resp.text


def test_a_token_announcement_forgets_only_that_token() -> None:
    cache = VerifiedKeys()
    for key_id, jti in (("jwt:a", "j1"), ("jwt:b", "j2")):
        cache.put(key_id, "h", Principal(tenant_id="t1", actor=f"token:{jti}", kind="session",
                                         scopes=frozenset()), cache.epoch)
    cache.on_change('{"action": "session.revoke", "tenant_id": "t1", "resource": "token:j1"}')
    assert [cache.get(k, "h") is not None for k in ("jwt:a", "jwt:b")] == [False, True]


async def set_policy_elsewhere(url: str, tenant: str, module: str) -> None:
    """What another API process does for PUT /v1/policy."""
    await change_elsewhere(
        url, tenant, "policy.set", f"policy:{tenant}",
        "INSERT INTO policy_overrides (tenant_id, module, checksum, updated_by) "
        "VALUES (%s, %s, 'x', 'key:elsewhere')", (tenant, module))


def test_a_policy_override_set_elsewhere_applies_well_within_the_ttl(
        server: str, admin: Client, database_url: str) -> None:
    tenant = new_tenant(admin)
    with Client(server, api_key=key(admin, tenant, "admin")) as c:
        c.remember("before the override")  # the tenant's (absent) override is now remembered
        asyncio.run(set_policy_elsewhere(database_url, tenant, READ_ONLY))
        # the TTL is 5 s: only the announcement is this quick
        check = poll(lambda: c.request("POST", "/v1/policy/check",
                                       json={"action": "memory.write"}),
                     lambda r: not r["allow"], within_s=1.0)
        assert check == {"allow": False, "reasons": ["this tenant is read-only"], "error": False}


def test_policy_announcements_forget_only_that_tenants_override() -> None:
    cache = Overrides()
    cache.put("t1", None, cache.epoch)
    cache.put("t2", {"module": "m"}, cache.epoch)
    cache.on_change('{"action": "policy.clear", "tenant_id": "t2", "resource": "policy:t2"}')
    assert cache.get("t1") is None and cache.get("t2") is not None  # t1: remembered as "none"
    assert cache.get("t2") is policy._MISSING
    epoch = cache.epoch
    cache.on_change(None)
    cache.put("t1", None, epoch)  # read before the announcement: not stored
    assert cache.get("t1") is policy._MISSING


def test_an_entry_in_use_is_due_for_a_background_read_once_past_half_its_ttl() -> None:
    cache = VerifiedKeys(ttl_s=0.2)
    cache.put("k1", "h", principal("t1"), cache.epoch)
    assert not cache.due("k1")  # fresh
    time.sleep(0.11)
    assert cache.due("k1") and not cache.due("k1")  # once: one re-read in flight
    cache.refreshed("k1")
    cache.put("k1", "h", principal("t1"), cache.epoch)  # what the re-read stores
    assert not cache.due("k1") and cache.get("k1", "h") is not None
    assert not cache.due("unknown")


def test_a_key_in_steady_use_is_reread_in_the_background_and_a_revocation_still_lands(
        server: str, admin: Client, database_url: str) -> None:
    tenant = new_tenant(admin)
    secret = key(admin, tenant, "memory:read")
    with Client(server, api_key=secret) as c, psycopg.connect(database_url,
                                                              autocommit=True) as conn:
        assert c.http.get("/v1/memory").status_code == 200
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s",
                     (secret.split("_")[1],))  # not announced: only a re-read can see it
        resp = poll(lambda: c.http.get("/v1/memory"), lambda r: r.status_code != 200,
                    within_s=CACHE_TTL_S + 1.0, every_s=0.1)
        assert resp.status_code == 401 and "revoked" in resp.text
