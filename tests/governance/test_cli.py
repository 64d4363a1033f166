"""Every governance verb of `soma`, end to end against a real server of its own."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.governance.conftest import run_soma, soma_env

from somastack.config import Settings


def ok(env: dict[str, str], *args: str) -> str:
    out = run_soma(env, *args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def test_identity_verbs(fresh_server: str, fresh_settings: Settings) -> None:
    admin = soma_env(fresh_settings)  # the local bootstrap admin key from SOMA_HOME
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    created = json.loads(ok(admin, "tenant", "create", tenant, "--plan", "pro", "--json"))
    assert created["tenant"]["plan"] == "pro" and created["key"]["key"].startswith("soma_")
    assert tenant in ok(admin, "tenant", "list")
    assert json.loads(ok(admin, "tenant", "show", tenant))["id"] == tenant
    owner = soma_env(fresh_settings, SOMA_API_KEY=created["key"]["key"])
    reader = json.loads(ok(owner, "key", "create", "reader", "-s", "memory:read", "--json"))
    assert [k["name"] for k in json.loads(ok(owner, "key", "list", "--json"))] == ["admin", "reader"]
    ok(owner, "key", "revoke", reader["id"])
    refused = run_soma(soma_env(fresh_settings, SOMA_API_KEY=reader["key"]), "recall", "x")
    assert refused.returncode == 1 and "revoked" in refused.stderr
    persona = json.loads(ok(owner, "persona", "create", "--name", "p1", "--system-prompt", "Be brief.",
                            "--json"))["hash"]
    jwt = ok(owner, "token", "mint", "--persona-hash", persona, "--policy-hash", "q1",
             "--memory", "readwrite").strip()
    session = soma_env(fresh_settings, SOMA_API_KEY=jwt)
    ok(session, "remember", "written with a session token")
    before = json.loads(ok(admin, "keys", "list", "--json"))
    assert "active kid" in ok(admin, "keys", "rotate")
    assert len(json.loads(ok(admin, "keys", "list", "--json"))) == len(before) + 1
    ok(session, "recall", "session")  # still valid after rotation
    minted = json.loads(ok(owner, "token", "mint", "--persona-hash", persona, "--policy-hash", "q",
                           "--json"))
    assert not minted["jti"].startswith("-")  # an id is a CLI argument, never an option
    ok(owner, "token", "revoke", minted["jti"])
    ok(admin, "tenant", "disable", tenant)
    assert run_soma(owner, "key", "list").returncode == 1
    ok(admin, "tenant", "enable", tenant)
    rows = json.loads(ok(owner, "audit", "list", "--json", "--action", "key.revoke"))["items"]
    assert [r["resource"] for r in rows] == [f"key:{reader['id']}"]


def test_policy_verbs_and_admin_init(fresh_server: str, fresh_settings: Settings, tmp_path: Path) -> None:
    env = soma_env(fresh_settings)
    module = tmp_path / "read_only.rego"
    module.write_text('package soma.tenant\nimport rego.v1\n'
                      'deny contains "read-only" if input.action == "memory.write"\n')
    ok(env, "policy", "set", str(module))
    assert "read-only" in ok(env, "policy", "show")
    denied = run_soma(env, "policy", "check", "memory.write")
    assert denied.returncode == 1 and "deny: read-only" in denied.stdout
    ok(env, "policy", "clear")
    assert "allow" in ok(env, "policy", "check", "memory.write")
    out = ok(env, "admin", "init", "--new-key")
    key = out.split("shown once):")[1].split()[0]
    assert json.loads(ok(soma_env(fresh_settings, SOMA_API_KEY=key), "tenant", "list", "--json"))
