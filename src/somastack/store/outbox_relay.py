"""The outbox relay and idempotent consumers over NATS JetStream.

The relay claims due events with FOR UPDATE SKIP LOCKED (several relays share the work), publishes
each with `Nats-Msg-Id` (JetStream drops duplicates inside its window) and marks it published in
the same transaction. A failed publish is retried with exponential backoff; after
`outbox_max_attempts` the event is dead: marked in the table and announced on the dead-letter
stream. State lives in PostgreSQL, so a relay killed at any point resumes where it stopped.

A consumer records each event id in consumed_events in the same transaction as its effect, so a
redelivered or replayed event is acknowledged without being applied twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import nats
import psycopg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from psycopg.rows import dict_row

from somastack.config import Settings
from somastack.store import Database

log = logging.getLogger("somastack.outbox")
Handler = Callable[[psycopg.AsyncConnection[Any], dict[str, Any]], Awaitable[None]]
DUPLICATE_WINDOW_S = 120.0


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """base · 2^(attempts-1), capped at max_s."""
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)))


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """The events stream and the dead-letter stream, created when missing."""
    for name, subject, max_size in (
        (settings.outbox_stream, settings.outbox_subject, settings.outbox_max_event_bytes),
        (settings.outbox_dlq_stream, settings.outbox_dlq_subject, -1),
    ):
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(api.StreamConfig(
                name=name, subjects=[f"{subject}.>"], max_msg_size=max_size,
                duplicate_window=DUPLICATE_WINDOW_S, storage=api.StorageType.FILE))


def _message(row: dict[str, Any]) -> bytes:
    return json.dumps({
        "id": str(row["id"]), "tenant_id": row["tenant_id"], "topic": row["topic"],
        "type": row["type"], "payload": row["payload"], "created_at": row["created_at"].isoformat(),
    }).encode()


class OutboxRelay:
    """Publishes committed outbox events to JetStream; `run_once` is one claim-publish-mark pass."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.settings = db, settings
        self.nc: Any = None
        self.js: JetStreamContext | None = None

    async def connect(self) -> JetStreamContext:
        if self.js is None:
            assert self.settings.nats_url, "SOMA_NATS_URL is not set"
            self.nc = await nats.connect(self.settings.nats_url, connect_timeout=2,
                                         max_reconnect_attempts=-1, allow_reconnect=True)
            self.js = self.nc.jetstream()
            await ensure_streams(self.js, self.settings)
        return self.js

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        self.nc = self.js = None

    async def _publish(self, js: JetStreamContext, row: dict[str, Any]) -> None:
        msg_id = str(row["id"]) if row["replays"] == 0 else f"{row['id']}:r{row['replays']}"
        await js.publish(f"{self.settings.outbox_subject}.{row['topic']}", _message(row), timeout=5,
                         stream=self.settings.outbox_stream,
                         headers={"Nats-Msg-Id": msg_id, "Soma-Event-Id": str(row["id"])})

    async def _dead_letter(self, js: JetStreamContext, row: dict[str, Any], error: str) -> None:
        body = {"id": str(row["id"]), "topic": row["topic"], "type": row["type"],
                "tenant_id": row["tenant_id"], "attempts": row["attempts"] + 1, "error": error}
        await js.publish(f"{self.settings.outbox_dlq_subject}.{row['topic']}", json.dumps(body).encode(),
                         timeout=5, stream=self.settings.outbox_dlq_stream,
                         headers={"Nats-Msg-Id": f"dead:{row['id']}:{row['replays']}"})

    async def run_once(self) -> dict[str, int]:
        """Publish the due events; returns counts of published, retried and dead events."""
        js = await self.connect()
        s = self.settings
        counts = {"published": 0, "retried": 0, "dead": 0}
        async with self.db.system() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "SELECT id, tenant_id, topic, type, payload, created_at, attempts, replays FROM outbox "
                "WHERE published_at IS NULL AND dead_at IS NULL AND next_attempt_at <= now() "
                "ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED", (s.outbox_batch,))
            for row in await cur.fetchall():
                try:
                    await self._publish(js, row)
                except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:1000]
                    if row["attempts"] + 1 >= s.outbox_max_attempts:
                        await self._dead_letter(js, row, error)
                        await conn.execute(
                            "UPDATE outbox SET attempts = attempts + 1, last_error = %s, dead_at = now() "
                            "WHERE id = %s", (error, row["id"]))
                        counts["dead"] += 1
                    else:
                        wait = backoff_s(row["attempts"] + 1, s.outbox_backoff_s, s.outbox_backoff_max_s)
                        await conn.execute(
                            "UPDATE outbox SET attempts = attempts + 1, last_error = %s, "
                            "next_attempt_at = now() + %s WHERE id = %s",
                            (error, timedelta(seconds=wait), row["id"]))
                        counts["retried"] += 1
                    continue
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, published_at = now(), last_error = NULL "
                    "WHERE id = %s", (row["id"],))
                counts["published"] += 1
        return counts

    async def run_forever(self) -> None:
        """Relay until cancelled; an unreachable NATS or database is retried, never fatal."""
        while True:
            try:
                counts = await self.run_once()
                if counts["published"] + counts["retried"] + counts["dead"] >= self.settings.outbox_batch:
                    continue  # more may be due right now
            except (TimeoutError, OSError, psycopg.Error, nats.errors.Error) as exc:
                log.warning("outbox relay: %s; retrying", exc)
                await self.close()
            await asyncio.sleep(self.settings.outbox_poll_s)


async def consume(db: Database, js: JetStreamContext, *, consumer: str, subject: str, stream: str,
                  handler: Handler, dlq_subject: str, max_deliver: int = 5, batch: int = 50,
                  timeout_s: float = 1.0, backoff: float = 1.0) -> int:
    """One pull of up to `batch` events for a durable consumer; returns how many were applied.

    Each event is applied at most once per consumer (consumed_events); a failing handler is
    retried with backoff (nak) and after `max_deliver` deliveries moved to the dead-letter subject.
    """
    sub = await js.pull_subscribe(subject, durable=consumer, stream=stream,
                                  config=api.ConsumerConfig(ack_wait=30))
    try:
        msgs = await sub.fetch(batch, timeout=timeout_s)
    except (TimeoutError, nats.errors.TimeoutError):
        msgs = []
    finally:
        await sub.unsubscribe()
    applied = 0
    for msg in msgs:
        event = json.loads(msg.data)
        try:
            async with db.system() as conn:
                cur = await conn.execute(
                    "INSERT INTO consumed_events (consumer, event_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING RETURNING event_id", (consumer, UUID(event["id"])))
                if await cur.fetchone() is not None:
                    await handler(conn, event)
                    applied += 1
            await msg.ack()
        except Exception as exc:  # any handler failure: retry later, then dead-letter
            delivered = msg.metadata.num_delivered
            if delivered >= max_deliver:
                await js.publish(f"{dlq_subject}.{consumer}", json.dumps(
                    {"event": event, "consumer": consumer, "error": str(exc)[:1000],
                     "deliveries": delivered}).encode())
                await msg.term()
            else:
                await msg.nak(delay=backoff_s(delivered, backoff, 300.0))
    return applied
