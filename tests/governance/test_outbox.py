"""Transactional outbox → NATS JetStream: at-least-once relay, retries with backoff, dead letters,
idempotent consumers and replay, against the real NATS server."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import psycopg
import pytest
import pytest_asyncio
from tests.governance.conftest import run_soma, soma_env

from somastack import Client
from somastack.config import Settings
from somastack.store import Database, outbox
from somastack.store.outbox_relay import OutboxRelay, backoff_s, consume

NATS_URL = os.environ.get("SOMA_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
def nats_settings(fresh_settings: Settings) -> Settings:
    """Streams and subjects of this test only (the NATS server is shared)."""
    tag = uuid.uuid4().hex[:10]
    return fresh_settings.model_copy(update={
        "nats_url": NATS_URL, "outbox_stream": f"T{tag}", "outbox_subject": f"t{tag}.events",
        "outbox_dlq_stream": f"T{tag}_DLQ", "outbox_dlq_subject": f"t{tag}.dlq",
        "outbox_backoff_s": 0.05, "outbox_max_attempts": 3, "outbox_max_event_bytes": 2048})


@pytest_asyncio.fixture
async def relay(fresh_db: Database, nats_settings: Settings) -> AsyncIterator[OutboxRelay]:
    r = OutboxRelay(fresh_db, nats_settings)
    try:
        await r.connect()
    except (OSError, nats.errors.Error) as exc:
        pytest.fail(f"NATS is not running at {NATS_URL} (run `make services`): {exc}")
    yield r
    assert r.js is not None
    for stream in (nats_settings.outbox_stream, nats_settings.outbox_dlq_stream):
        await r.js.delete_stream(stream)
    await r.close()


async def emit(db: Database, n: int, *, size: int = 10, tenant: str = "acme") -> list[uuid.UUID]:
    async with db.tenant(tenant) as conn:
        return [await outbox.emit(conn, tenant_id=tenant, topic="memory.events", type="memory.test",
                                  payload={"i": i, "pad": "x" * size}) for i in range(n)]


async def stream_messages(relay: OutboxRelay, stream: str) -> list[Any]:
    assert relay.js is not None
    sub = await relay.js.pull_subscribe(">", stream=stream)
    try:
        return await sub.fetch(100, timeout=1)
    except nats.errors.TimeoutError:
        return []
    finally:
        await sub.unsubscribe()


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(a, 1.0, 10.0) for a in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]


def test_memory_writes_and_their_events_commit_together(client: Client, db: psycopg.Connection,
                                                        tenant: str) -> None:
    written = client.remember_batch([{"content": "first"}, {"content": "second"}], namespace="ob")
    mid = written["items"][0]["id"]
    client.update(mid, content="first, edited")
    client.delete(mid)
    client.forget(namespace="ob")
    rows = db.execute("SELECT type, payload FROM outbox WHERE tenant_id = %s ORDER BY seq",
                      (tenant,)).fetchall()
    assert [r[0] for r in rows] == ["memory.remembered", "memory.updated", "memory.deleted",
                                    "memory.forgotten"]
    assert {i["id"] for i in rows[0][1]["items"]} == {i["id"] for i in written["items"]}
    resp = client.http.post("/v1/memory/remember/batch",
                            json={"items": [{"content": "ok"}, {"content": ""}]})
    assert resp.status_code == 422
    assert db.execute("SELECT count(*) FROM outbox WHERE tenant_id = %s", (tenant,)).fetchone() == (4,)


@pytest.mark.asyncio
async def test_a_rolled_back_change_leaves_no_event(fresh_db: Database, fresh_url: str) -> None:
    with pytest.raises(RuntimeError):
        async with fresh_db.tenant("acme") as conn:
            await outbox.emit(conn, tenant_id="acme", topic="memory.events", type="x", payload={})
            raise RuntimeError("the domain change failed")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # RLS: only your own tenant's events
        async with fresh_db.tenant("acme") as conn:
            await outbox.emit(conn, tenant_id="other", topic="memory.events", type="x", payload={})
    with psycopg.connect(fresh_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


@pytest.mark.asyncio
async def test_relay_publishes_once_even_after_a_crash_before_marking(
        relay: OutboxRelay, fresh_db: Database, nats_settings: Settings) -> None:
    ids = await emit(fresh_db, 3)
    async with fresh_db.system() as conn:  # a relay that published, then died before its commit
        cur = await conn.execute("SELECT * FROM outbox ORDER BY seq LIMIT 1")
        assert relay.js is not None
        await relay._publish(relay.js, await cur.fetchone())
    assert await relay.run_once() == {"published": 3, "retried": 0, "dead": 0}
    assert await relay.run_once() == {"published": 0, "retried": 0, "dead": 0}
    msgs = await stream_messages(relay, nats_settings.outbox_stream)
    assert [m.headers["Soma-Event-Id"] for m in msgs] == [str(i) for i in ids]
    body = json.loads(msgs[0].data)
    assert body["tenant_id"] == "acme" and body["type"] == "memory.test" and body["payload"]["i"] == 0
    assert msgs[0].subject == f"{nats_settings.outbox_subject}.memory.events"
    async with fresh_db.system() as conn:
        status = await outbox.status(conn)
    assert (status.pending, status.published, status.dead) == (0, 3, 0)


@pytest.mark.asyncio
async def test_failing_event_is_retried_with_backoff_then_dead_lettered_and_replayable(
        relay: OutboxRelay, fresh_db: Database, nats_settings: Settings) -> None:
    (big,) = await emit(fresh_db, 1, size=4096)  # over the stream's max message size
    (small,) = await emit(fresh_db, 1)
    assert await relay.run_once() == {"published": 1, "retried": 1, "dead": 0}
    async with fresh_db.system() as conn:
        row = await (await conn.execute(
            "SELECT attempts, next_attempt_at > now() AS later, last_error FROM outbox WHERE id = %s",
            (big,))).fetchone()
    assert row["attempts"] == 1 and row["later"] and row["last_error"]
    assert await relay.run_once() == {"published": 0, "retried": 0, "dead": 0}  # not due yet
    for expected in ({"published": 0, "retried": 1, "dead": 0}, {"published": 0, "retried": 0, "dead": 1}):
        async with fresh_db.system() as conn:
            await conn.execute("UPDATE outbox SET next_attempt_at = now() WHERE id = %s", (big,))
        assert await relay.run_once() == expected
    dead = await stream_messages(relay, nats_settings.outbox_dlq_stream)
    assert len(dead) == 1 and json.loads(dead[0].data)["id"] == str(big)
    async with fresh_db.system() as conn:
        assert (await outbox.status(conn)).dead == 1
        assert await outbox.replay(conn, dead_only=True, since=None, event_ids=None) == 1
        assert (await outbox.status(conn)).pending == 1
    assert small


@pytest.mark.asyncio
async def test_consumers_apply_each_event_once_across_replays_and_dead_letter_failures(
        relay: OutboxRelay, fresh_db: Database, nats_settings: Settings) -> None:
    await emit(fresh_db, 4)
    await relay.run_once()
    applied: list[int] = []

    async def handler(conn: psycopg.AsyncConnection, event: dict[str, Any]) -> None:
        applied.append(event["payload"]["i"])

    assert relay.js is not None
    args = {"subject": f"{nats_settings.outbox_subject}.>", "stream": nats_settings.outbox_stream,
            "dlq_subject": nats_settings.outbox_dlq_subject}
    assert await consume(fresh_db, relay.js, consumer="counter", handler=handler, **args) == 4
    async with fresh_db.system() as conn:
        assert await outbox.replay(conn, dead_only=False, since=None, event_ids=None) == 4
    assert (await relay.run_once())["published"] == 4  # redelivered under new message ids
    assert await consume(fresh_db, relay.js, consumer="counter", handler=handler, **args) == 0
    assert sorted(applied) == [0, 1, 2, 3]

    async def broken(conn: psycopg.AsyncConnection, event: dict[str, Any]) -> None:
        raise ValueError("cannot apply")

    for _ in range(2):
        assert await consume(fresh_db, relay.js, consumer="broken", handler=broken, max_deliver=2,
                             backoff=0.01, **args) == 0
        await asyncio.sleep(0.1)
    dead = await stream_messages(relay, nats_settings.outbox_dlq_stream)
    assert {json.loads(m.data)["consumer"] for m in dead} == {"broken"} and len(dead) >= 8


def test_outbox_cli_status_and_replay(fresh_server: str, fresh_settings: Settings) -> None:
    env = soma_env(fresh_settings)
    out = run_soma(env, "outbox", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["pending"] >= 1 and status["dead"] == 0  # bootstrap's audit events, no NATS set
    out = run_soma(env, "outbox", "replay")
    assert out.returncode == 0 and "requeued 0 event(s)" in out.stdout
    with Client(fresh_server, api_key=fresh_settings.admin_key_file.read_text().strip()) as admin:
        resp = admin.http.post("/v1/outbox/replay", json={"ids": [str(uuid.uuid4()), "nope"]})
        assert resp.status_code == 422 and resp.json()["field"] == "ids[1]", resp.text
    with Client(fresh_server) as anon:
        assert anon.http.get("/v1/outbox/status").status_code == 401


def test_server_relays_memory_events_to_jetstream(fresh_settings: Settings,
                                                  request: pytest.FixtureRequest) -> None:
    tag = uuid.uuid4().hex[:10]
    for name, value in {"nats_url": NATS_URL, "outbox_stream": f"S{tag}",
                        "outbox_subject": f"s{tag}.events", "outbox_dlq_stream": f"S{tag}_DLQ",
                        "outbox_dlq_subject": f"s{tag}.dlq", "outbox_poll_s": 0.1}.items():
        setattr(fresh_settings, name, value)
    server = request.getfixturevalue("fresh_server")
    with Client(server, api_key=fresh_settings.admin_key_file.read_text().strip()) as admin:
        mid = admin.remember("relayed to NATS")["id"]

    async def events() -> list[dict[str, Any]]:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        try:
            for _ in range(50):
                try:
                    sub = await js.pull_subscribe(f"s{tag}.events.memory.events", stream=f"S{tag}")
                    msgs = await sub.fetch(10, timeout=0.5)
                    return [json.loads(m.data) for m in msgs]
                except (nats.errors.TimeoutError, nats.js.errors.NotFoundError):
                    await asyncio.sleep(0.2)
            return []
        finally:
            for stream in (f"S{tag}", f"S{tag}_DLQ"):
                try:
                    await js.delete_stream(stream)
                except nats.js.errors.NotFoundError:
                    pass
            await nc.close()

    got = asyncio.run(events())
    assert [e["payload"]["items"][0]["id"] for e in got if e["type"] == "memory.remembered"] == [mid]
