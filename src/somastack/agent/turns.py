"""Stored turns and their event streams: open (idempotently), append, finish, read, tail.

Every event has an id `{turn_id}:{seq}` (seq from 1), a type, the turn and trace ids and its
data. Events are buffered by the running turn and written in order at each stage boundary, so
a reader (GET /v1/turns/{id}, a reconnecting client) sees whole stages; `tail` follows a turn
that is still running by polling its rows, which works across server processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from somastack.errors import Conflict, InvalidInput, NotFound
from somastack.ledger.budgets import fetch_rows
from somastack.store import Database
from somastack.store.oneshot import run_one
from somastack.store.retention import purge_older_than

TERMINAL = ("done", "error", "cancelled")
PURGE_BATCH = 1000  # turns deleted per statement (their events go with them): short transactions
TAIL_POLL_S = 0.05
# Turns started in this process whose row is not written yet: a turn without an Idempotency-Key
# writes its row with its first events (open_later). Reading such a turn waits for the row (up
# to OPENING_WAIT_S) instead of answering 404 for a turn whose id the client already holds.
_OPENING: dict[tuple[str, str], asyncio.Event] = {}
OPENING_WAIT_S = 10.0


@dataclass
class Turn:
    tenant: str
    id: str
    session_id: str
    persona_hash: str
    status: str
    inputs: dict[str, Any]
    trace_id: str
    request_hash: str
    answer: str | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    finished_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id, "persona_hash": self.persona_hash,
                "status": self.status, "inputs": self.inputs, "answer": self.answer,
                "error": self.error, "usage": self.usage, "fallbacks": self.fallbacks,
                "trace_id": self.trace_id, "created_at": self.created_at,
                "finished_at": self.finished_at}


def _turn(row: dict[str, Any]) -> Turn:
    return Turn(tenant=row["tenant_id"], id=row["id"], session_id=row["session_id"],
                persona_hash=row["persona_hash"], status=row["status"], inputs=row["inputs"],
                trace_id=row["trace_id"], request_hash=row["request_hash"], answer=row["answer"],
                error=row["error"], usage=row["usage"], fallbacks=row["fallbacks"],
                created_at=row["created_at"], finished_at=row["finished_at"])


def request_hash(body: dict[str, Any]) -> str:
    """What makes two POSTs with one Idempotency-Key the same request."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def parse_event_id(raw: str, field_name: str = "Last-Event-ID") -> tuple[str, int]:
    """(turn id, seq) from an event id `{turn_id}:{seq}`."""
    turn_id, sep, seq = raw.strip().rpartition(":")
    if not sep or not turn_id or not seq.isdigit():
        raise InvalidInput("expected an event id of the form <turn_id>:<seq>", field=field_name)
    return turn_id, int(seq)


async def open_turn(db: Database, turn: Turn, idempotency_key: str | None) -> tuple[Turn, bool]:
    """Record a new running turn, or return the turn this Idempotency-Key already started.

    (turn, created). The same key with a different request is a Conflict.
    """
    rows = await run_one(
        db, turn.tenant,
        "INSERT INTO turns (tenant_id, id, session_id, persona_hash, idempotency_key, "
        "request_hash, inputs, trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL "
        "DO NOTHING RETURNING *",
        (turn.tenant, turn.id, turn.session_id, turn.persona_hash, idempotency_key,
         turn.request_hash, Jsonb(turn.inputs), turn.trace_id))
    if rows:
        return _turn(rows[0]), True
    # the key is taken (a committed turn: the insert waited for any concurrent one)
    rows = await run_one(db, turn.tenant,
                         "SELECT * FROM turns WHERE tenant_id = %s AND idempotency_key = %s",
                         (turn.tenant, idempotency_key))
    first = _turn(rows[0])
    if first.request_hash != turn.request_hash:
        raise Conflict("this Idempotency-Key was used for a different turn request",
                       field="Idempotency-Key")
    return first, False


def open_later(db: Database, turn: Turn) -> Awaitable[Turn]:
    """The write of a new turn's row (no Idempotency-Key), for its event log to run later;
    until it is done, `get_turn` of this turn in this process waits for it."""
    key = (turn.tenant, turn.id)
    written = _OPENING[key] = asyncio.Event()

    async def write() -> Turn:
        try:
            return (await open_turn(db, turn, None))[0]
        finally:
            written.set()
            _OPENING.pop(key, None)
    return write()


async def get_turn(db: Database, tenant: str, turn_id: str) -> Turn:
    opening = _OPENING.get((tenant, turn_id))
    if opening is not None:  # started here, row not written yet
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opening.wait(), OPENING_WAIT_S)
    async with db.tenant(tenant) as conn:
        rows = await fetch_rows(conn, "SELECT * FROM turns WHERE tenant_id = %s AND id = %s",
                                (tenant, turn_id))
    if not rows:
        raise NotFound(f"turn {turn_id!r} not found (turns are deleted after SOMA_TURN_DAYS days)",
                       field="turn_id")
    return _turn(rows[0])


async def purge_turns(db: Database, older_than_days: float) -> int:
    """Delete every tenant's turns started longer ago than the retention (settings.turn_days),
    with their events, in batches; returns how many turns. A turn still marked running by then
    belonged to a process that died: no turn runs for days."""
    return await purge_older_than(db, "turns", ("tenant_id", "id"), older_than_days, PURGE_BATCH)


async def list_turns(db: Database, tenant: str, session_id: str | None, limit: int,
                     before: datetime | None = None) -> list[Turn]:
    where = ["tenant_id = %s"]
    params: list[str | datetime] = [tenant]
    if session_id:
        where.append("session_id = %s")
        params.append(session_id)
    if before is not None:
        where.append("created_at < %s")
        params.append(before)
    async with db.tenant(tenant) as conn:
        rows = await fetch_rows(conn, f"SELECT * FROM turns WHERE {' AND '.join(where)} "
                                      f"ORDER BY created_at DESC LIMIT %s", (*params, limit))
    return [_turn(r) for r in rows]


async def history(db: Database, tenant: str, session_id: str, limit: int
                  ) -> list[tuple[str, str]]:
    """(input, answer) of the session's last finished turns, oldest first."""
    rows = await run_one(
        db, tenant, "SELECT inputs->>'text' AS text, answer FROM turns WHERE tenant_id = %s "
                    "AND session_id = %s AND status = 'done' AND answer IS NOT NULL "
                    "ORDER BY created_at DESC LIMIT %s", (tenant, session_id, limit))
    return [(r["text"], r["answer"]) for r in reversed(rows)]


async def finish_turn(db: Database, tenant: str, turn_id: str, *, status: str,
                      answer: str | None, error: dict[str, Any] | None,
                      usage: dict[str, Any] | None, fallbacks: list[dict[str, Any]]) -> None:
    await run_one(
        db, tenant,
        "UPDATE turns SET status = %s, answer = %s, error = %s, usage = %s, fallbacks = %s, "
        "finished_at = now() WHERE tenant_id = %s AND id = %s AND status = 'running'",
        (status, answer, Jsonb(error) if error else None, Jsonb(usage) if usage else None,
         Jsonb(fallbacks), tenant, turn_id))


def event_of(turn_id: str, trace_id: str, seq: int, type_: str, data: Any) -> dict[str, Any]:
    return {"id": f"{turn_id}:{seq}", "type": type_, "turn_id": turn_id, "trace_id": trace_id,
            "data": data}


class EventLog:
    """The running turn's events: numbered as they happen, written in order, off the turn's
    critical path (`flush` starts a background write; `drain` waits for all of them)."""

    def __init__(self, db: Database, tenant: str, turn_id: str, trace_id: str, *,
                 after: Awaitable[Any] | None = None) -> None:
        """`after`: the write of the turn's row, when it is left to the log; it starts with the
        first flush, and every event write (and so `drain`) waits for it."""
        self.db, self.tenant, self.turn_id, self.trace_id = db, tenant, turn_id, trace_id
        self.seq = 0
        self._pending: list[dict[str, Any]] = []
        self._after = after
        self._writer: asyncio.Future[Any] | None = None
        self.count_by_type: dict[str, int] = {}

    def add(self, type_: str, data: Any) -> dict[str, Any]:
        self.seq += 1
        event = event_of(self.turn_id, self.trace_id, self.seq, type_, data)
        self._pending.append(event)
        self.count_by_type[type_] = self.count_by_type.get(type_, 0) + 1
        return event

    def flush(self) -> None:
        """Write the pending events in the background, after every earlier write."""
        if self._after is not None:
            self._writer, self._after = asyncio.ensure_future(self._after), None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._writer = asyncio.create_task(self._write(pending, self._writer))

    async def drain(self) -> None:
        """Flush and wait until every event is stored (raises what a write raised)."""
        self.flush()
        if self._writer is not None:
            await self._writer

    async def _write(self, pending: list[dict[str, Any]], before: asyncio.Future[Any] | None
                     ) -> None:
        if before is not None:
            await before
        values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(pending))
        params: list[Any] = []
        for e in pending:
            params += [self.tenant, self.turn_id, int(e["id"].rpartition(":")[2]), e["type"],
                       Jsonb(e["data"])]
        await run_one(self.db, self.tenant,
                      f"INSERT INTO turn_events (tenant_id, turn_id, seq, type, data) "
                      f"VALUES {values} ON CONFLICT DO NOTHING", params)


async def events_after(db: Database, turn: Turn, after: int) -> list[dict[str, Any]]:
    async with db.tenant(turn.tenant) as conn:
        rows = await fetch_rows(
            conn, "SELECT seq, type, data FROM turn_events WHERE tenant_id = %s AND turn_id = %s "
                  "AND seq > %s ORDER BY seq", (turn.tenant, turn.id, after))
    return [event_of(turn.id, turn.trace_id, r["seq"], r["type"], r["data"]) for r in rows]


async def tail(db: Database, turn: Turn, after: int, *, timeout_s: float
               ) -> AsyncIterator[list[dict[str, Any]]]:
    """The turn's stored events after `after`, a batch per read; while it runs, wait for more
    (up to timeout_s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        events = await events_after(db, turn, after)
        if events:
            yield events
            after = int(events[-1]["id"].rpartition(":")[2])
        if turn.status in TERMINAL:
            if not events:
                return
            continue  # drain what was written before the status changed
        if loop.time() > deadline:
            return
        await asyncio.sleep(TAIL_POLL_S)
        turn = await get_turn(db, turn.tenant, turn.id)
