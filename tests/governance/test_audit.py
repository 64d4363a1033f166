"""The audit chain: append-only in the database, gap-free, and any edit or deletion is named."""

from __future__ import annotations

import asyncio
import os
import uuid

import psycopg
import pytest
from tests.governance.conftest import run_soma

from somastack import Client
from somastack.config import Settings
from somastack.governance import audit
from somastack.store import Database


def event(i: int, tenant: str = "t1") -> audit.AuditEvent:
    return audit.AuditEvent(actor=f"key:{i}", tenant_id=tenant, action="memory.write",
                            resource=f"memory:{i}", decision="allow", reasons=["granted"],
                            trace_id=f"trace-{i}", payload={"i": i, "x": 0.5})


async def fill(db: Database, n: int) -> None:
    await asyncio.gather(*(audit.record(db, event(i)) for i in range(n)))


def verify_cli(url: str) -> tuple[int, str]:
    env = {**os.environ, "SOMA_DATABASE_URL": url}
    out = run_soma(env, "audit", "verify")
    return out.returncode, out.stdout + out.stderr


@pytest.mark.asyncio
async def test_concurrent_appends_form_one_gap_free_chain(fresh_db: Database, fresh_url: str) -> None:
    await fill(fresh_db, 25)
    report = audit.verify_database(fresh_url)
    assert report.ok and report.rows == 25
    with psycopg.connect(fresh_url) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM audit_log ORDER BY seq")]
    assert seqs == list(range(1, 26))
    assert verify_cli(fresh_url) == (0, "ok: 25 rows, chain intact\n")


@pytest.mark.asyncio
async def test_database_refuses_update_delete_truncate_and_forged_inserts(
        fresh_db: Database, fresh_url: str) -> None:
    await fill(fresh_db, 3)
    with psycopg.connect(fresh_url, autocommit=True) as conn:  # even as the table's owner
        for sql in ("UPDATE audit_log SET decision = 'deny' WHERE seq = 2",
                    "DELETE FROM audit_log WHERE seq = 3", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(sql)
        row = conn.execute("SELECT at, hash FROM audit_log WHERE seq = 3").fetchone()
        for seq, prev in ((5, row[1]), (4, "0" * 128)):  # a gap, then a broken link
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(
                    "INSERT INTO audit_log (seq, at, actor, action, resource, decision, payload_hash, "
                    "prev_hash, hash) VALUES (%s, now(), 'x', 'x', 'x', 'allow', 'h', %s, %s)",
                    (seq, prev, uuid.uuid4().hex))
    assert audit.verify_database(fresh_url).ok


def tamper(url: str, sql: str) -> None:
    """What an attacker with the owner's password can do: switch the triggers off and write."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql)


@pytest.mark.asyncio
@pytest.mark.parametrize(("sql", "bad", "words"), [
    ("UPDATE audit_log SET decision = 'deny' WHERE seq = 4", 4, "edited"),
    ("UPDATE audit_log SET reasons = '[\"nothing to see\"]'::jsonb WHERE seq = 7", 7, "edited"),
    ("DELETE FROM audit_log WHERE seq = 5", 5, "missing"),
    ("DELETE FROM audit_log WHERE seq IN (2, 3)", 2, "rows 2-3 missing"),
    ("UPDATE audit_log SET hash = repeat('a', 128) WHERE seq = 6", 6, "edited"),
])
async def test_verify_names_the_first_tampered_row(fresh_db: Database, fresh_url: str, sql: str,
                                                  bad: int, words: str) -> None:
    await fill(fresh_db, 8)
    tamper(fresh_url, sql)
    report = audit.verify_database(fresh_url)
    assert not report.ok and report.first_bad_seq == bad and words in (report.problem or "")
    code, text = verify_cli(fresh_url)
    assert code == 1 and f"broken at row {bad}" in text, text


@pytest.mark.asyncio
async def test_rewriting_a_row_and_its_hash_breaks_the_next_link(fresh_db: Database,
                                                                 fresh_url: str) -> None:
    await fill(fresh_db, 5)
    with psycopg.connect(fresh_url) as conn:
        rows = conn.execute("SELECT seq, at, tenant_id, actor, action, resource, decision, reasons, "
                            "trace_id, payload_hash, prev_hash FROM audit_log WHERE seq = 3").fetchall()
    cols = ["seq", "at", "tenant_id", "actor", "action", "resource", "decision", "reasons", "trace_id",
            "payload_hash", "prev_hash"]
    row = dict(zip(cols, rows[0], strict=True))
    row["decision"] = "deny"
    forged = audit.row_hash(row["prev_hash"], row)  # a consistent rewrite of row 3 alone
    tamper(fresh_url, f"UPDATE audit_log SET decision = 'deny', hash = '{forged}' WHERE seq = 3")
    report = audit.verify_database(fresh_url)
    assert report.first_bad_seq == 4 and "prev_hash" in (report.problem or "")


def test_audit_api_is_tenant_scoped(server: str, admin: Client, tenant_key,
                                    make_client) -> None:
    a, b = f"au-{uuid.uuid4().hex[:8]}", f"au-{uuid.uuid4().hex[:8]}"
    ca, cb = make_client(a), make_client(b)
    ca.remember("a note")
    cb.remember("b note")
    rows = ca.request("GET", "/v1/audit", params={"action": "policy:memory.write"})["items"]
    assert rows and {r["tenant_id"] for r in rows} == {a}
    assert ca.http.get("/v1/audit", params={"tenant": b}).status_code == 403
    assert ca.http.get("/v1/audit/verify").status_code == 403
    both = admin.request("GET", "/v1/audit", params={"tenant": b, "limit": 1000})["items"]
    assert both and {r["tenant_id"] for r in both} == {b}
    assert ca.http.get("/v1/audit", params={"decision": "maybe"}).json()["field"] == "decision"
    assert admin.request("GET", "/v1/audit/verify")["ok"] is True


def test_shared_database_chain_verifies_through_the_cli(settings: Settings, server: str,
                                                        database_url: str) -> None:
    env = {**os.environ, "SOMA_DATABASE_URL": database_url}
    out = run_soma(env, "audit", "verify", "--json")
    assert out.returncode == 0 and '"ok": true' in out.stdout, out.stdout + out.stderr
