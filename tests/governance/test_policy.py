"""The policy decision point: Rego via regopy, deny by default, tenant overrides that only deny,
errors, crashes and timeouts that deny, every decision audited."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from tests.governance.conftest import audit_rows, run_soma

from somastack import Client, SomaAPIError
from somastack.config import Settings
from somastack.governance import constitution, policy
from somastack.governance.principal import Principal
from somastack.governance.rego_worker import RegoFailure, RegoPool
from somastack.governance.runtime import preflight
from somastack.store import Database

READ_ONLY = """package soma.tenant
import rego.v1
deny contains "this tenant is read-only" if input.action == "memory.write"
"""
CONFLICTING = """package soma.tenant
import rego.v1
size := 1 if input.action == "memory.write"
size := 2 if input.action == "memory.write"
deny contains "too big" if size > 5
"""
CRASHING = """package soma.tenant
import rego.v1
deny contains "x" if { data.soma.authz.granted({"action": "a"}) with input as {"action": "b"} }
"""


@pytest.fixture
def tenant_client(make_client: Callable[[str | None], Client]) -> Client:
    return make_client(f"pol-{uuid.uuid4().hex[:8]}")


def test_shipped_rego_unit_tests_pass_and_failures_fail(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOMA_")}
    out = run_soma(env, "policy", "test")
    assert out.returncode == 0 and "7 passed, 0 failed" in out.stdout, out.stdout + out.stderr
    bad = tmp_path / "mine_test.rego"
    bad.write_text('package mine_test\nimport rego.v1\nimport data.soma.authz\n'
                   'test_admin_may_launch if { authz.decide({"action": "launch", '
                   '"subject": {"scopes": ["admin"]}, "constitution": {"rules": {}}}, set()).allow }\n')
    out = run_soma(env, "policy", "test", str(bad))
    assert out.returncode == 1 and "FAIL mine_test.test_admin_may_launch" in out.stdout


def test_override_can_only_add_denials_and_decisions_are_audited(
        tenant_client: Client, make_client: Callable[[str | None], Client],
        db: psycopg.Connection) -> None:
    tenant = tenant_client.http.headers["X-Soma-Tenant"]
    keep = tenant_client.remember("written before the override")["id"]
    tenant_client.request("PUT", "/v1/policy", json={"module": READ_ONLY})
    with pytest.raises(SomaAPIError) as e:
        tenant_client.remember("refused")
    assert e.value.status == 403 and e.value.type.endswith("policy-denied")
    assert "this tenant is read-only" in str(e.value)
    tenant_client.delete(keep)  # memory.delete is not denied by this override
    other = make_client(f"pol-{uuid.uuid4().hex[:8]}")
    other.remember("another tenant is not affected")
    check = tenant_client.request("POST", "/v1/policy/check", json={"action": "memory.write"})
    assert check == {"allow": False, "reasons": ["this tenant is read-only"], "error": False}
    tenant_client.request("DELETE", "/v1/policy")
    tenant_client.remember("allowed again")
    decisions = [r[1] for r in audit_rows(db, tenant_id=tenant, action="policy:memory.write")]
    assert decisions == ["allow", "deny", "deny", "allow"]
    assert db.execute("SELECT count(*) FROM memories WHERE tenant_id = %s AND content = 'refused'",
                      (tenant,)).fetchone() == (0,)


@pytest.mark.parametrize(("module", "words"), [
    ("package soma.authz\ndeny := 1", "package soma.tenant"),
    ("package soma.tenant\nimport rego.v1\ndeny contains x if {{{", "does not compile"),
    (CRASHING, "does not compile"),
])
def test_bad_overrides_are_refused_with_the_field(tenant_client: Client, module: str, words: str) -> None:
    resp = tenant_client.http.put("/v1/policy", json={"module": module})
    assert resp.status_code == 422 and resp.json()["field"] == "module" and words in resp.json()["detail"]
    assert tenant_client.request("GET", "/v1/policy")["override"] is None


def test_a_policy_that_errors_denies_and_is_audited_as_error(tenant_client: Client,
                                                             db: psycopg.Connection) -> None:
    tenant = tenant_client.http.headers["X-Soma-Tenant"]
    tenant_client.request("PUT", "/v1/policy", json={"module": CONFLICTING})
    with pytest.raises(SomaAPIError) as e:
        tenant_client.remember("must not be written")
    assert e.value.status == 403 and "policy evaluation failed (runtime)" in str(e.value)
    assert audit_rows(db, tenant_id=tenant, action="policy:memory.write")[-1][1] == "error"
    assert tenant_client.recall("written")["evidence"] == []  # reads do not go through the override


@pytest.mark.asyncio
async def test_crash_and_timeout_deny_and_the_evaluator_recovers(fresh_settings: Settings,
                                                                 fresh_db: Database,
                                                                 fresh_url: str) -> None:
    active = await preflight(fresh_settings, announce=lambda _m: None)
    who = Principal(tenant_id="default", actor="key:test", kind="api_key", scopes=frozenset({"admin"}))
    req = policy.Request(subject=who, action="memory.write", resource={"route": "test"})
    pool = RegoPool(1, 5.0)
    try:
        assert (await policy.authorize(fresh_db, pool, active, req)).allow
        with psycopg.connect(fresh_url, autocommit=True) as conn:  # stored before validation existed
            conn.execute("INSERT INTO policy_overrides (tenant_id, module, checksum, updated_by) "
                         "VALUES ('default', %s, 'x', 'test')", (CRASHING,))
        policy.OVERRIDES.forget()  # a change made behind the API's back is not announced
        crashed = await policy.authorize(fresh_db, pool, active, req)
        assert not crashed.allow and crashed.error and "(crash)" in crashed.reasons[0]
        with psycopg.connect(fresh_url, autocommit=True) as conn:
            conn.execute("DELETE FROM policy_overrides")
            policy.OVERRIDES.forget()
            assert [r[1] for r in audit_rows(conn, action="policy:memory.write")] == ["allow", "error"]
        fresh = policy.Request(subject=who, action="memory.write", resource={"route": "again"})
        assert (await policy.authorize(fresh_db, pool, active, fresh)).allow  # a new worker took over
    finally:
        pool.close()
    slow = RegoPool(1, 0.0005)
    try:
        timed_out = await policy.authorize(fresh_db, slow, active, req)
        assert not timed_out.allow and "(timeout)" in timed_out.reasons[0]
        with pytest.raises(RegoFailure) as e:
            await slow.query(policy.base_modules(), {}, policy.DECISION_QUERY)
        assert e.value.kind == "timeout"
    finally:
        slow.close()


def test_constitution_can_switch_memory_writes_off(fresh_admin: Client, fresh_settings: Settings
                                                   ) -> None:
    current = fresh_admin.request("GET", "/v1/constitution")["document"]
    doc = {**current, "version": 2, "rules": {**current["rules"], "memory_writes": False}}
    envelope = constitution.sign({"document": doc}, *constitution.load_signer(
        fresh_settings.signer_dir / "local-1.key"))
    fresh_admin.request("POST", "/v1/constitution", json=envelope)
    with pytest.raises(SomaAPIError) as e:
        fresh_admin.remember("not while the constitution forbids it")
    assert e.value.status == 403 and "disabled by the constitution" in str(e.value)
