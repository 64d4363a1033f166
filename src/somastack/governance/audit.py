"""The audit chain: one row per event, hash = SHA3-512(prev_hash || canonical(row)), gap-free seq.

Appends take a transaction-scoped advisory lock so that seq and prev_hash are read and written
by one writer at a time; the database refuses UPDATE, DELETE and TRUNCATE and re-checks the
chain link on insert. `verify_database` re-walks the whole chain and names the first bad row.

A chain cannot prove on its own that its newest rows were not cut off (with the triggers switched
off, deleting the tail leaves a valid, shorter chain). Every verification reports the head
(`seq:hash` of the last row); kept somewhere else, it is an anchor: a later verification given it
fails if that row is gone or no longer has that hash.

Changes to keys and tenants are also announced (NOTIFY on GOVERNANCE_CHANNEL, delivered at
commit), so that every server process drops what it cached about them at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from somastack.errors import InvalidInput
from somastack.governance.canonical import GENESIS, canonical_json, checksum, sha3_512_hex
from somastack.store import Database, outbox

_LOCK_ID = 0x50A5_A0D1
GOVERNANCE_CHANNEL = "soma_governance"
# actions that change what a credential may do or what the policy decides
ANNOUNCED = ("key.", "tenant.", "session.revoke", "policy.")
_WATCHERS: list[Callable[[str | None], None]] = []
DECISIONS = ("allow", "deny", "error", "info")
_COLUMNS = "seq, at, tenant_id, actor, action, resource, decision, reasons, trace_id, payload_hash"


@dataclass
class AuditEvent:
    """What happened: who (actor, tenant) did what (action) to what (resource), and the verdict."""

    actor: str
    action: str
    resource: str
    decision: str
    tenant_id: str | None = None
    reasons: list[str] = field(default_factory=list)
    trace_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head: str | None = None  # `seq:hash` of the last row walked (None: no rows)


ANCHOR_RE = re.compile(r"([1-9][0-9]{0,18}):([0-9a-f]{128})")


def parse_anchor(text: str) -> tuple[int, str]:
    """`seq:hash` (a head reported by an earlier verification) → (seq, hash); InvalidInput
    naming `anchor` otherwise."""
    m = ANCHOR_RE.fullmatch(text.strip().lower())
    if m is None:
        raise InvalidInput("expected seq:hash, the head an earlier verification reported "
                           "(a row number, ':', 128 hex digits)", field="anchor")
    return int(m.group(1)), m.group(2)


def _canonical_row(row: dict[str, Any]) -> dict[str, Any]:
    at = row["at"]
    return {
        "seq": row["seq"], "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "tenant_id": row["tenant_id"], "actor": row["actor"], "action": row["action"],
        "resource": row["resource"], "decision": row["decision"], "reasons": list(row["reasons"]),
        "trace_id": row["trace_id"], "payload_hash": row["payload_hash"],
    }


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA3-512(prev_hash || canonical JSON of the row's hashed columns), hex."""
    return sha3_512_hex(prev_hash.encode() + canonical_json(_canonical_row(row)))


async def append(conn: psycopg.AsyncConnection, event: AuditEvent) -> dict[str, Any]:
    """Append one row on the caller's (owner-rights) transaction; also queue it on the outbox."""
    if event.decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}")
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    last = await cur.fetchone()
    prev_hash = last["hash"] if last else GENESIS
    row: dict[str, Any] = {
        "seq": (last["seq"] if last else 0) + 1, "at": datetime.now(UTC),
        "tenant_id": event.tenant_id, "actor": event.actor, "action": event.action,
        "resource": event.resource, "decision": event.decision, "reasons": list(event.reasons),
        "trace_id": event.trace_id, "payload_hash": checksum(event.payload),
    }
    row["prev_hash"] = prev_hash
    row["hash"] = row_hash(prev_hash, row)
    await conn.execute(
        f"INSERT INTO audit_log ({_COLUMNS}, prev_hash, hash) VALUES (%(seq)s, %(at)s, "
        "%(tenant_id)s, %(actor)s, %(action)s, %(resource)s, %(decision)s, %(reasons_json)s, "
        "%(trace_id)s, %(payload_hash)s, %(prev_hash)s, %(hash)s)",
        {**row, "reasons_json": Jsonb(row["reasons"])},
    )
    await outbox.emit(conn, tenant_id=None, topic="audit", type=event.action, payload={
        "seq": row["seq"], "hash": row["hash"], "tenant_id": event.tenant_id, "actor": event.actor,
        "action": event.action, "resource": event.resource, "decision": event.decision,
        "reasons": row["reasons"],
    })
    if event.action.startswith(ANNOUNCED):
        await conn.execute("SELECT pg_notify(%s, %s)", (GOVERNANCE_CHANNEL, json.dumps(
            {"action": event.action, "tenant_id": event.tenant_id, "resource": event.resource})))
    return row


def watch(on_change: Callable[[str | None], None]) -> None:
    """Call on_change(payload) for every governance announcement this process hears (see
    `listen`): JSON with action, tenant_id and resource; None when some may have been missed."""
    if on_change not in _WATCHERS:
        _WATCHERS.append(on_change)


def listen(db: Database) -> None:
    """Start hearing governance announcements (NOTIFY on GOVERNANCE_CHANNEL); idempotent."""
    db.listen(GOVERNANCE_CHANNEL, _announce)


def announcement(payload: str | None) -> dict[str, Any] | None:
    """A governance announcement as {action, tenant_id, resource}; None when it is missing or
    unreadable (then anything may have changed)."""
    try:
        change = json.loads(payload) if payload else None
    except ValueError:
        return None
    return change if isinstance(change, dict) else None


def _announce(payload: str | None) -> None:
    for on_change in list(_WATCHERS):
        on_change(payload)


async def record(db: Database, event: AuditEvent) -> dict[str, Any]:
    """Append one row in its own transaction, pipelined: BEGIN, the lock and the chain's head
    travel in one round trip, the inserts and COMMIT in a second."""
    async with db.pool.connection() as conn, conn.pipeline(), conn.transaction():
        return await append(conn, event)


def verify_rows(rows: Iterable[dict[str, Any]], anchor: tuple[int, str] | None = None
                ) -> ChainReport:
    """Walk rows in seq order; the first row whose seq, link or hash is wrong breaks the chain,
    and so does a chain that no longer holds the anchor (seq, hash): cut short before it, or
    rewritten up to it."""
    expected_seq, prev_hash, count = 1, GENESIS, 0
    for row in rows:
        count += 1
        seq = row["seq"]
        if seq != expected_seq:
            missing = f"row {expected_seq}" if seq == expected_seq + 1 else \
                f"rows {expected_seq}-{seq - 1}"
            return ChainReport(False, count, expected_seq,
                               f"{missing} missing: the sequence jumps from {expected_seq - 1} to {seq}")
        if row["prev_hash"] != prev_hash:
            return ChainReport(False, count, seq,
                               f"row {seq}: prev_hash does not match the hash of row {seq - 1}")
        if row_hash(prev_hash, row) != row["hash"]:
            return ChainReport(False, count, seq, f"row {seq}: content does not match its hash "
                                                  "(the row was edited)")
        if anchor is not None and seq == anchor[0] and row["hash"] != anchor[1]:
            return ChainReport(False, count, seq, f"row {seq} does not have the anchored hash: the "
                                                  f"chain up to row {seq} was rewritten")
        prev_hash, expected_seq = row["hash"], seq + 1
    last = expected_seq - 1
    head = f"{last}:{prev_hash}" if last else None
    if anchor is not None and anchor[0] > last:
        return ChainReport(False, count, last + 1, f"rows {last + 1}-{anchor[0]} missing: the "
                           f"chain ends at row {last}, but the anchor names row {anchor[0]} "
                           "(the newest rows were cut off)", head)
    return ChainReport(True, count, head=head)


def verify_database(url: str, anchor: tuple[int, str] | None = None) -> ChainReport:
    """Verify the whole chain of the database at `url` (against an anchor, if given; see
    verify_rows), streaming rows with a server cursor."""
    with psycopg.connect(url) as conn:
        with conn.cursor(name="audit_verify", row_factory=dict_row) as cur:
            cur.itersize = 5000
            cur.execute(f"SELECT {_COLUMNS}, prev_hash, hash FROM audit_log ORDER BY seq")
            return verify_rows(cur, anchor)


async def query(
    db: Database, *, tenant_id: str | None, action: str | None = None, actor: str | None = None,
    decision: str | None = None, since: datetime | None = None, until: datetime | None = None,
    after_seq: int = 0, limit: int = 100,
) -> list[dict[str, Any]]:
    """Rows matching every given filter, oldest first after `after_seq`; tenant None = all."""
    where = ["seq > %(after)s"]
    params: dict[str, Any] = {"after": after_seq, "limit": limit}
    for name, value, clause in (
        ("tenant", tenant_id, "tenant_id = %(tenant)s"), ("action", action, "action = %(action)s"),
        ("actor", actor, "actor = %(actor)s"), ("decision", decision, "decision = %(decision)s"),
        ("since", since, "at >= %(since)s"), ("until", until, "at < %(until)s"),
    ):
        if value is not None:
            where.append(clause)
            params[name] = value
    async with db.system() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_COLUMNS}, prev_hash, hash FROM audit_log WHERE {' AND '.join(where)} "
            "ORDER BY seq LIMIT %(limit)s", params)
        return list(await cur.fetchall())
