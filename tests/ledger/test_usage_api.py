"""GET /v1/usage and `soma usage`: the ledger summed per group, per tenant, with named errors."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal

import psycopg
import pytest

from somastack import Client, SomaAPIError
from somastack.ledger import Amounts, Scope, reserve, settle
from somastack.store import Database

# (agent, session, minute, tokens, tool_calls, cost_cents)
USAGE = [("helper", "s1", "2025-03-01T10:00:00Z", 100, 1, Decimal("0.5")),
         ("helper", "s1", "2025-03-01T10:01:00Z", 50, 0, Decimal("0.25")),
         ("helper", "s2", "2025-03-01T11:30:00Z", 10, 2, Decimal("1")),
         ("critic", "s3", "2025-03-02T09:00:00Z", 7, 0, Decimal("0.07"))]


def load(db: psycopg.Connection, tenant: str) -> None:
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO usage_ledger (tenant_id, agent, session, ts_minute, tokens, tool_calls, "
            "cost_cents) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(tenant, *row) for row in USAGE])


def test_usage_grouped_by_agent_session_and_time(client: Client, tenant: str,
                                                 db: psycopg.Connection) -> None:
    load(db, tenant)
    total = client.usage()
    assert total["group_by"] == [] and total["from"] is None and total["to"] is None
    assert [(r["tokens"], r["tool_calls"], Decimal(r["cost_cents"])) for r in total["rows"]] == [
        (167, 3, Decimal("1.82"))]
    by = client.usage(group_by=["agent", "session"])
    assert [(r["agent"], r["session"], r["tokens"]) for r in by["rows"]] == [
        ("critic", "s3", 7), ("helper", "s1", 150), ("helper", "s2", 10)]
    hours = client.usage("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z", ["hour"])
    assert [(r["hour"][:19], r["tokens"]) for r in hours["rows"]] == [
        ("2025-03-01T10:00:00", 150), ("2025-03-01T11:00:00", 10)]
    assert hours["from"].startswith("2025-03-01T00:00:00") and hours["group_by"] == ["hour"]
    days = client.usage(start="2025-03-01T10:01:00", group_by=["day", "agent"])  # naive = UTC
    assert [(r["day"][:10], r["agent"], r["tokens"]) for r in days["rows"]] == [
        ("2025-03-01", "helper", 60), ("2025-03-02", "critic", 7)]
    minutes = client.request("GET", "/v1/usage", params={"group_by": "minute, session",
                                                         "to": "2025-03-01T10:01:00Z"})
    assert [(r["minute"][:16], r["session"]) for r in minutes["rows"]] == [("2025-03-01T10:00", "s1")]


@pytest.mark.parametrize(("params", "field"), [
    ({"group_by": "agent,planet"}, "group_by"),
    ({"from": "yesterday"}, "from"),
    ({"to": "2025-13-01"}, "to"),
    ({"to": "1740787200"}, "to"),  # digits would be read as Unix time
    ({"from": "2025-03-02T00:00:00Z", "to": "2025-03-01T00:00:00Z"}, "from"),
    ({"group_by": "x" * 101}, "group_by"),
])
def test_bad_parameters_are_422_naming_the_field(client: Client, params: dict, field: str) -> None:
    resp = client.http.get("/v1/usage", params=params)
    assert resp.status_code == 422 and resp.json()["field"] == field, resp.text


def test_tenant_b_sees_none_of_tenant_a_usage(make_client: Callable[[str | None], Client],
                                              db: psycopg.Connection) -> None:
    a_name, b_name = f"ua-{uuid.uuid4().hex[:8]}", f"ub-{uuid.uuid4().hex[:8]}"
    a, b = make_client(a_name), make_client(b_name)
    load(db, a_name)
    assert a.usage()["rows"][0]["tokens"] == 167
    assert b.usage()["rows"] == [{"tokens": 0, "tool_calls": 0, "storage_bytes": 0,
                                  "egress_bytes": 0, "cost_cents": "0"}]
    assert b.usage(group_by=["agent"])["rows"] == []


def test_usage_needs_ledger_read_or_admin(server: str, tenant: str, client: Client,
                                          admin_key: str) -> None:
    with Client(server, api_key=admin_key) as platform:
        keys = {s: platform.request("POST", f"/v1/tenants/{tenant}/keys",
                                    json={"name": s, "scopes": [s]})["key"]
                for s in ("ledger:read", "memory:read")}
    with Client(server, api_key=keys["ledger:read"]) as c:
        assert c.usage()["rows"]
    with Client(server, api_key=keys["memory:read"]) as c, pytest.raises(SomaAPIError) as e:
        c.usage()
    assert e.value.status == 403


@pytest.mark.asyncio
async def test_settled_steps_show_up_in_the_report(database: Database, tenant: str,
                                                   client: Client) -> None:
    held = await reserve(database, Scope(tenant, agent="helper", session="live"), Amounts(tokens=90))
    await settle(database, held, Amounts(tokens=42, tool_calls=1, cost_cents=Decimal("0.1")))
    rows = client.usage(group_by=["session"])["rows"]
    assert [(r["session"], r["tokens"], r["tool_calls"]) for r in rows] == [("live", 42, 1)]


def test_usage_cli(cli_env: dict[str, str], tenant: str, client: Client,
                   db: psycopg.Connection) -> None:
    load(db, tenant)

    def soma(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "somastack.cli.main", "usage", *args],
                              env=cli_env, capture_output=True, text=True, timeout=120)

    out = soma("--group-by", "agent", "--from", "2025-03-01T00:00:00Z", "--json")
    assert out.returncode == 0, out.stderr
    assert [(r["agent"], r["tokens"]) for r in json.loads(out.stdout)["rows"]] == [
        ("critic", 7), ("helper", 160)]
    table = soma("--group-by", "agent,session").stdout
    assert "helper" in table and "s2" in table and "150" in table
    bad = soma("--group-by", "planet")
    assert bad.returncode == 1 and "group_by" in bad.stderr
