"""The built-in tools through the broker: http.fetch against a real loopback HTTP server with an
egress allow-list, memory.remember / memory.recall on the real brain and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from somastack.agent.tools import (
    Decision,
    LedgerBudget,
    ToolBroker,
    ToolContext,
    ToolDef,
    ToolRegistry,
    http_fetch_tool,
    memory_tools,
)
from somastack.brain.embed import AsyncEmbedder, MiniLMEmbedder
from somastack.errors import InvalidInput, ToolNotAllowed
from somastack.ledger import PriceTable
from somastack.store import Database

BIG = 300 * 1024


class Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path.startswith("/redirect-"):
            target = {"/redirect-in": "/hello", "/redirect-out": "http://elsewhere.invalid/x"}
            self.send_response(302)
            self.send_header("Location", target[self.path])
            self.end_headers()
            return
        body = b"y" * BIG if self.path == "/big" else "héllo wörld".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def embedder() -> Iterator[AsyncEmbedder]:
    e = AsyncEmbedder(MiniLMEmbedder())
    yield e
    e.close()


async def allow_all(ctx: ToolContext, tool: ToolDef, args: dict[str, Any]) -> Decision:
    return Decision(True)


@pytest_asyncio.fixture
async def broker(database: Database, site: str, embedder: AsyncEmbedder
                 ) -> AsyncIterator[ToolBroker]:
    tools = [http_fetch_tool([site], max_bytes=64 * 1024, timeout_s=5),
             *memory_tools(database, embedder, namespace="agent", max_bytes=4096)]
    yield ToolBroker(ToolRegistry(tools), database, authorize=allow_all,
                     budget=LedgerBudget(database, PriceTable.from_mapping({"egress_per_mb": 1})))


def egress(db: psycopg.Connection, tenant: str) -> int:
    row = db.execute("SELECT coalesce(sum(egress_bytes), 0) FROM usage_ledger WHERE tenant_id = %s",
                     (tenant,)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.asyncio
async def test_fetch_allowed_host_streams_and_meters_egress(
    broker: ToolBroker, site: str, tenant: str, db: psycopg.Connection
) -> None:
    done = await broker.run(ToolContext(tenant), "http.fetch", {"url": f"http://{site}/hello"})
    assert done.result["status"] == 200 and done.result["body"] == "héllo wörld"
    assert not done.result["truncated"] and done.egress_bytes >= len("héllo wörld".encode())
    followed = await broker.run(ToolContext(tenant), "http.fetch",
                                {"url": f"http://{site}/redirect-in"})
    assert followed.result["url"].endswith("/hello") and followed.result["body"] == "héllo wörld"
    big = await broker.run(ToolContext(tenant), "http.fetch", {"url": f"http://{site}/big"})
    assert big.result["truncated"] and len(big.result["body"]) == 64 * 1024
    assert egress(db, tenant) == done.egress_bytes + followed.egress_bytes + big.egress_bytes


@pytest.mark.asyncio
async def test_fetch_refuses_hosts_off_the_allow_list(
    broker: ToolBroker, site: str, tenant: str, db: psycopg.Connection
) -> None:
    port = site.split(":")[1]
    for url in (f"http://localhost:{port}/hello", "https://example.com/",
                f"http://{site}/redirect-out"):
        with pytest.raises(ToolNotAllowed) as err:
            await broker.run(ToolContext(tenant), "http.fetch", {"url": url})
        assert err.value.field == "arguments.url"
    with pytest.raises(InvalidInput) as bad:
        await broker.run(ToolContext(tenant), "http.fetch", {"url": "file:///etc/passwd"})
    assert bad.value.field == "arguments.url"


@pytest.mark.asyncio
async def test_remember_then_recall_within_the_tenant(
    broker: ToolBroker, tenant: str, db: psycopg.Connection
) -> None:
    ctx = ToolContext(tenant, agent="bot", trace_id="tr-1")
    fact = "Ada's cat is called Pixel and sleeps on the piano."
    saved = await broker.run(ctx, "memory.remember", {"content": fact, "tags": ["pets"]})
    assert saved.result["status"] == "created" and saved.storage_bytes == len(fact.encode())
    await broker.run(ctx, "memory.remember", {"content": "The office is in Lyon."})
    found = await broker.run(ctx, "memory.recall", {"query": "what is the cat's name", "top_k": 1})
    (top,) = found.result["evidence"]
    assert top["id"] == saved.result["id"] and "Pixel" in top["content"]
    row = db.execute("SELECT namespace, source, trace_id FROM memories WHERE id = %s",
                     (uuid.UUID(top["id"]),)).fetchone()
    assert row == ("agent", "agent:bot", "tr-1")
    stranger = await broker.run(ToolContext(f"t-{uuid.uuid4().hex[:12]}"), "memory.recall",
                                {"query": "what is the cat's name"})
    assert stranger.result["evidence"] == []
    with pytest.raises(InvalidInput) as err:
        await broker.run(ctx, "memory.remember", {"content": "x" * 5000})
    assert err.value.field == "arguments.content"
