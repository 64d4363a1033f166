"""Recall traces are kept for `brain_trace_days`, then deleted; feedback on one is then a 404."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from somastack.brain.feedback import PURGE_BATCH, feedback, purge_traces
from somastack.config import Settings
from somastack.errors import NotFound
from somastack.store import Database


def _trace(db: psycopg.Connection, tenant: str, age_days: float) -> uuid.UUID:
    tid = uuid.uuid4()
    db.execute("INSERT INTO brain_traces (id, tenant_id, session_id, query, weights, items, "
               "created_at) VALUES (%s, %s, 's', 'q', %s, %s, now() - make_interval(secs => %s))",
               (tid, tenant, Jsonb({}), Jsonb([]), age_days * 86400))
    return tid


@pytest.mark.asyncio
async def test_old_traces_are_deleted_in_every_tenant_and_recent_ones_kept(
        settings: Settings, database_url: str, db: psycopg.Connection) -> None:
    database = await Database.open(settings.model_copy(update={"pool_min": 1, "pool_max": 2}))
    try:
        a, b = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}"
        old = [_trace(db, t, 31) for t in (a, b)]
        kept = [_trace(db, t, 29) for t in (a, b)]
        assert await purge_traces(database, 30) >= 2
        left = {r[0] for r in db.execute("SELECT id FROM brain_traces WHERE tenant_id IN (%s, %s)",
                                        (a, b))}
        assert left == set(kept)
        with pytest.raises(NotFound) as err:
            await feedback(database, settings, a, old[0], [], 1.0)
        assert err.value.field == "trace_id" and "30 days" in str(err.value)
        assert await purge_traces(database, 30) == 0  # nothing left to do: a no-op
    finally:
        await database.close()


@pytest.mark.asyncio
async def test_a_backlog_larger_than_a_batch_is_purged_in_one_call(
        settings: Settings, database_url: str, db: psycopg.Connection) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    database = await Database.open(settings.model_copy(update={"pool_min": 1, "pool_max": 2}))
    try:
        db.execute("INSERT INTO brain_traces (id, tenant_id, session_id, query, weights, items, "
                   "created_at) SELECT gen_random_uuid(), %s, 's', 'q', '{}', '[]', "
                   "now() - interval '90 days' FROM generate_series(1, %s)", (tenant, PURGE_BATCH + 7))
        assert await purge_traces(database, 30) >= PURGE_BATCH + 7
    finally:
        await database.close()
    n = db.execute("SELECT count(*) FROM brain_traces WHERE tenant_id = %s", (tenant,)).fetchone()
    assert n == (0,)
