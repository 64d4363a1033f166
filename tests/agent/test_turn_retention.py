"""Turns are kept for `turn_days`, then deleted with their events; reading one is then a 404."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from somastack.agent.turns import PURGE_BATCH, get_turn, purge_turns
from somastack.errors import NotFound
from somastack.store import Database


def _turn(db: psycopg.Connection, tenant: str, age_days: float, events: int = 3) -> str:
    tid = f"turn_{uuid.uuid4().hex[:20]}"
    db.execute("INSERT INTO turns (tenant_id, id, session_id, persona_hash, request_hash, status, "
               "inputs, trace_id, created_at) VALUES (%s, %s, 's', 'p', 'h', 'done', '{}', 'tr', "
               "now() - make_interval(secs => %s))", (tenant, tid, age_days * 86400))
    db.execute("INSERT INTO turn_events (tenant_id, turn_id, seq, type, data) "
               "SELECT %s, %s, g, 'answer', '{}' FROM generate_series(1, %s) g", (tenant, tid, events))
    return tid


def _left(db: psycopg.Connection, table: str, column: str, ids: list[str]) -> set[str]:
    return {r[0] for r in db.execute(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", (ids,))}


@pytest.mark.asyncio
async def test_old_turns_go_with_their_events_in_every_tenant_and_recent_ones_stay(
        database: Database, db: psycopg.Connection) -> None:
    a, b = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}"
    old = [_turn(db, t, 91) for t in (a, b)]
    kept = [_turn(db, t, 89) for t in (a, b)]
    assert await purge_turns(database, 90) >= 2
    assert _left(db, "turns", "id", old + kept) == set(kept)
    assert _left(db, "turn_events", "turn_id", old + kept) == set(kept)  # events went along
    with pytest.raises(NotFound) as err:
        await get_turn(database, a, old[0])
    assert err.value.field == "turn_id" and "SOMA_TURN_DAYS" in str(err.value)
    assert (await get_turn(database, a, kept[0])).id == kept[0]
    assert await purge_turns(database, 90) == 0  # nothing left to do: a no-op


@pytest.mark.asyncio
async def test_a_backlog_larger_than_a_batch_is_purged_in_one_call(
        database: Database, db: psycopg.Connection) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    db.execute("INSERT INTO turns (tenant_id, id, session_id, persona_hash, request_hash, status, "
               "inputs, trace_id, created_at) SELECT %s, 'turn_' || g, 's', 'p', 'h', 'done', '{}', "
               "'tr', now() - interval '400 days' FROM generate_series(1, %s) g",
               (tenant, PURGE_BATCH + 7))
    assert await purge_turns(database, 90) >= PURGE_BATCH + 7
    n = db.execute("SELECT count(*) FROM turns WHERE tenant_id = %s", (tenant,)).fetchone()
    assert n == (0,)
