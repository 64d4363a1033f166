"""Transactional outbox: an event is written in the same transaction as the change it describes.

`emit` takes the caller's open connection, so the change and its event commit or roll back
together; the relay (store/outbox_relay.py) publishes committed events to NATS JetStream.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


@dataclass(frozen=True)
class OutboxStatus:
    pending: int
    published: int
    dead: int
    retrying: int
    oldest_pending_at: datetime | None
    last_published_at: datetime | None


async def emit(conn: psycopg.AsyncConnection[Any], *, tenant_id: str | None, topic: str, type: str,
               payload: dict[str, Any]) -> UUID:
    """Queue one event on the caller's transaction; returns its id (the consumers' dedupe key)."""
    event_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO outbox (id, tenant_id, topic, type, payload) VALUES (%s, %s, %s, %s, %s)",
        (event_id, tenant_id, topic, type, Jsonb(payload)),
    )
    return event_id


async def status(conn: psycopg.AsyncConnection[Any]) -> OutboxStatus:
    cur = await conn.cursor(row_factory=dict_row).execute(
        """SELECT count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL) AS pending,
                  count(*) FILTER (WHERE published_at IS NOT NULL) AS published,
                  count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
                  count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL AND attempts > 0)
                    AS retrying,
                  min(created_at) FILTER (WHERE published_at IS NULL AND dead_at IS NULL)
                    AS oldest_pending_at,
                  max(published_at) AS last_published_at
           FROM outbox""")
    row = await cur.fetchone()
    assert row is not None
    return OutboxStatus(**row)


async def replay(conn: psycopg.AsyncConnection[Any], *, dead_only: bool, since: datetime | None,
                 event_ids: list[UUID] | None) -> int:
    """Queue events again (dead ones, or published ones too); returns how many were re-queued."""
    where = ["(dead_at IS NOT NULL OR published_at IS NOT NULL)"]
    params: dict[str, Any] = {}
    if dead_only:
        where.append("dead_at IS NOT NULL")
    if since is not None:
        where.append("created_at >= %(since)s")
        params["since"] = since
    if event_ids is not None:
        where.append("id = ANY(%(ids)s)")
        params["ids"] = event_ids
    cur = await conn.execute(
        "UPDATE outbox SET published_at = NULL, dead_at = NULL, attempts = 0, last_error = NULL, "
        f"next_attempt_at = now(), replays = replays + 1 WHERE {' AND '.join(where)}", params)
    return cur.rowcount
