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
from somastack.errors import InvalidInput
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
    assert verify_cli(fresh_url) == (0, f"ok: 25 rows, chain intact; head {report.head}\n")
    assert report.head == f"25:{conn_hash(fresh_url, 25)}"


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


def conn_hash(url: str, seq: int) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT hash FROM audit_log WHERE seq = %s", (seq,)).fetchone()
    assert row is not None
    return str(row[0])


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
    for since in ("1700000000", "yesterday"):  # digits would be read as Unix time
        resp = ca.http.get("/v1/audit", params={"since": since})
        assert resp.status_code == 422 and resp.json()["field"] == "since", resp.text
    assert ca.request("GET", "/v1/audit", params={"since": "2000-01-01"})["items"]
    assert admin.request("GET", "/v1/audit/verify")["ok"] is True


def test_shared_database_chain_verifies_through_the_cli(settings: Settings, server: str,
                                                        database_url: str) -> None:
    env = {**os.environ, "SOMA_DATABASE_URL": database_url}
    out = run_soma(env, "audit", "verify", "--json")
    assert out.returncode == 0 and '"ok": true' in out.stdout, out.stdout + out.stderr


@pytest.mark.asyncio
async def test_an_anchor_detects_the_newest_rows_cut_off_or_rewritten(fresh_db: Database,
                                                                      fresh_url: str) -> None:
    await fill(fresh_db, 8)
    head = audit.verify_database(fresh_url).head
    assert head is not None and head.startswith("8:")
    anchor = audit.parse_anchor(head)
    assert audit.verify_database(fresh_url, anchor).ok
    tamper(fresh_url, "DELETE FROM audit_log WHERE seq IN (7, 8)")
    alone = audit.verify_database(fresh_url)
    assert alone.ok and alone.rows == 6  # a chain cannot see its own tail cut off...
    report = audit.verify_database(fresh_url, anchor)  # ...its anchor can
    assert not report.ok and report.first_bad_seq == 7 and "cut off" in (report.problem or "")
    env = {**os.environ, "SOMA_DATABASE_URL": fresh_url}
    out = run_soma(env, "audit", "verify", "--anchor", head)
    assert out.returncode == 1 and "broken at row 7" in out.stderr, out.stdout + out.stderr
    await fill(fresh_db, 3)  # new rows 7-9 on the cut chain: internally valid again
    assert audit.verify_database(fresh_url).ok
    report = audit.verify_database(fresh_url, anchor)
    assert not report.ok and report.first_bad_seq == 8 and "rewritten" in (report.problem or "")


def test_a_malformed_anchor_is_refused_naming_it(settings: Settings, server: str, admin: Client,
                                                database_url: str) -> None:
    for bad in ("8", "0:" + "a" * 128, "8:" + "a" * 127, "8:" + "g" * 128):
        with pytest.raises(InvalidInput):
            audit.parse_anchor(bad)
    resp = admin.http.get("/v1/audit/verify", params={"anchor": "8:xyz"})
    assert resp.status_code == 422 and resp.json()["field"] == "anchor"
    head = admin.request("GET", "/v1/audit/verify")["head"]
    assert admin.request("GET", "/v1/audit/verify", params={"anchor": head})["ok"] is True
    env = {**os.environ, "SOMA_DATABASE_URL": database_url}
    out = run_soma(env, "audit", "verify", "--anchor", "nope")
    assert out.returncode == 2 and "--anchor" in out.stderr, out.stdout + out.stderr
