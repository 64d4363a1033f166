"""`soma bench scale`: ingest N memories over HTTP, then Q recalls with C concurrent clients.

The same queries also run straight against pgvector (ANN only, vectors embedded beforehand and
not timed), so the service's overhead is a ratio measured in the same run on the same data.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from pgvector.psycopg import register_vector_async

from somastack.bench import corpus, wire
from somastack.bench.server import served
from somastack.bench.stats import machine, percentiles_ms
from somastack.brain.embed import MiniLMEmbedder
from somastack.config import Settings
from somastack.governance.bootstrap import DEFAULT_TENANT
from somastack.store import embedded

Tick = Callable[[int], None]
NAMESPACE = "bench"


async def _ingest(url: str, api_key: str, texts: list[str], batch: int, parallel: int,
                  tick: Tick) -> float:
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            items = [{"content": t, "importance": 0.5} for t in chunk]
            resp = await http.post("/v1/memory/remember/batch", json={"items": items,
                                                                       "namespace": NAMESPACE})
            resp.raise_for_status()
            tick(len(chunk))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=600) as http:
        await asyncio.gather(*(worker(http) for _ in range(parallel)))
    return time.perf_counter() - start


async def _fire(qs: list[str], concurrency: int, one: Callable[[int], Any], tick: Tick
                ) -> tuple[list[float], float]:
    """Run one(i) for every query with `concurrency` workers; per-call latencies and wall time."""
    latencies: list[float] = []
    next_i = iter(range(len(qs)))

    async def worker() -> None:
        for i in next_i:
            t = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - t)
            tick(1)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


async def _recall_http(url: str, api_key: str, qs: list[str], top_k: int, concurrency: int,
                       tick: Tick, warmup: list[str]
                       ) -> tuple[list[float], float, list[dict[str, float]], list[float]]:
    """Latencies, wall time, the server's timings and each answer's precision (the share of
    its evidence that answers the question, corpus.relevant), after the `warmup` questions
    (not measured)."""
    server_timings: list[dict[str, float]] = []
    precision: list[float] = []
    conns = [await wire.Connection.open(url, {"Authorization": f"Bearer {api_key}"})
             for _ in range(concurrency)]
    free: asyncio.Queue[wire.Connection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)

    async def one(i: int) -> None:
        c = await free.get()
        try:
            answer = await c.post("/v1/memory/recall", {"query": qs[i], "namespace": NAMESPACE,
                                                        "top_k": top_k})
        finally:
            free.put_nowait(c)
        server_timings.append(answer["timings_ms"])
        found = [corpus.relevant(qs[i], e["memory"]["content"]) for e in answer["evidence"]]
        precision.append(sum(found) / len(found) if found else 0.0)

    try:
        for q in warmup:
            await conns[0].post("/v1/memory/recall", {"query": q, "namespace": NAMESPACE})
        lat, wall = await _fire(qs, concurrency, one, tick)
    finally:
        for c in conns:
            await c.close()
    return lat, wall, server_timings, precision


async def _recall_raw(db_url: str, tenant: str, vecs: np.ndarray, top_k: int, concurrency: int,
                      tick: Tick) -> list[float]:
    conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(concurrency)]
    free: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()
    for c in conns:
        await register_vector_async(c)
        await c.execute("SET hnsw.ef_search = 100")
        await c.execute("SET hnsw.iterative_scan = relaxed_order")
        free.put_nowait(c)
    sql = ("SELECT id FROM memories WHERE tenant_id = %s AND namespace = %s "
           "AND vector_dims(embedding) = 384 "
           "ORDER BY embedding::vector(384) <=> %s::vector(384) LIMIT %s")

    async def one(i: int) -> None:
        c = await free.get()
        try:
            await (await c.execute(sql, (tenant, NAMESPACE, vecs[i], top_k))).fetchall()
        finally:
            free.put_nowait(c)

    try:
        lat, _ = await _fire([""] * len(vecs), concurrency, one, tick)
    finally:
        for c in conns:
            await c.close()
    return lat


def settle(db_url: str) -> float:
    """Bring the database to rest after the ingest; the seconds it took.

    A bulk ingest leaves autovacuum (visibility map, statistics) and the checkpointer (the
    ingest's dirty pages) work to do, and on two cores that work would land at an arbitrary point
    in the recall measurement. Doing it here, timed on its own (`settle_s`), measures recall as
    it is in steady use. It is usually under a second: autovacuum has mostly caught up by then.
    """
    start = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) memories")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - start


REUSE_WARMUP = 200  # recalls before measuring on a kept database (its caches start cold)


def stored(home: Path) -> int:
    """How many live memories an earlier run left in `home`'s bench namespace (0: none)."""
    if not (home / "pgdata").exists():
        return 0
    with psycopg.connect(embedded.start(home)) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM memories WHERE tenant_id = %s "
                               "AND namespace = %s", (DEFAULT_TENANT, NAMESPACE)).fetchone()
        except psycopg.errors.UndefinedTable:  # a database that was never migrated
            return 0
    return int(row[0]) if row else 0


class HomeError(ValueError):
    """The bench's --home does not suit the run asked for."""


def run(memories: int, queries: int, concurrency: int, *, top_k: int = 10, batch: int = 250,
        ingest_parallel: int = 2, home: Path | None = None, reuse: bool = False,
        progress: Callable[[str, int], Tick] | None = None) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON-ready figures. The server is started on `home`
    (default: a new temporary one), which must hold no bench memories yet, unless `reuse`:
    then recall only is measured, on the memories an earlier run left there (ingest figures
    null; REUSE_WARMUP recalls warm the cold caches first)."""
    progress = progress or (lambda _label, _total: lambda _n: None)
    found = stored(home) if home is not None else 0
    if reuse:
        if not found:
            raise HomeError("--reuse needs a --home where an earlier `soma bench scale --home` "
                            "run left its memories")
        memories = found
    elif found:
        raise HomeError(f"{home} already holds {found} bench memories: measure recall on them "
                        "with --reuse, or ingest into a new --home")
    home = home or Path(tempfile.mkdtemp(prefix="soma-bench-"))
    tenant = DEFAULT_TENANT  # the fresh home's bootstrap tenant, whose admin key we use
    qs = corpus.queries(queries)
    # A kept database starts with cold caches: warm them with questions not measured after.
    warmup = corpus.queries(queries + REUSE_WARMUP)[queries:] if reuse else qs[:20]
    ingest_s: float | None = None
    probe = machine()  # before the server starts: the host idle
    with served(home, env={"SOMA_RATE_LIMIT": str(10**9)}) as srv:
        url = srv.url
        api_key = Settings(home=home).admin_key_file.read_text().strip()
        if not reuse:
            ingest_s = asyncio.run(_ingest(url, api_key, corpus.sentences(memories), batch,
                                           ingest_parallel, progress("ingest", memories)))
        settle_s = settle(embedded.start(home))
        lat, wall, server_timings, precision = asyncio.run(
            _recall_http(url, api_key, qs, top_k, concurrency, progress("recall (HTTP)", queries),
                         warmup))
        vecs = MiniLMEmbedder().embed(qs)
        raw = asyncio.run(_recall_raw(embedded.start(home), tenant, vecs, top_k, concurrency,
                                      progress("recall (raw pgvector)", queries)))
    http_ms, raw_ms = percentiles_ms(lat), percentiles_ms(raw, (50, 95))
    return {
        "benchmark": "scale",
        "memories": memories, "queries": queries, "concurrency": concurrency, "top_k": top_k,
        "reused": reuse,
        "ingest_s": round(ingest_s, 2) if ingest_s else None,
        "ingest_per_s": round(memories / ingest_s, 1) if ingest_s else None,
        "settle_s": round(settle_s, 2),
        "recall_ms": http_ms, "qps": round(queries / wall, 1),
        "raw_pgvector_ms": raw_ms,
        "quality": {f"precision_at_{top_k}": round(float(np.mean(precision)), 4),
                    f"hit_at_{top_k}": round(float(np.mean([p > 0 for p in precision])), 4)},
        "overhead_ratio": {p: round(http_ms[p] / raw_ms[p], 2) for p in ("p50", "p95") if raw_ms[p]},
        "server_ms_median": {k: round(float(np.median([t[k] for t in server_timings])), 2)
                             for k in ("embed", "admit", "candidates", "score", "total")},
        "machine": probe,
        "note": "recall_ms is measured after settle_s (VACUUM ANALYZE and CHECKPOINT after the "
                "ingest) and is end-to-end over HTTP (query embedding included), from clients on "
                "the same machine (one keep-alive connection each, bench/wire.py); raw_pgvector_ms "
                "is the ANN query alone on the same data and concurrency, embedding excluded; quality "
                "is the share of each answer's evidence that says what its question asks for "
                "(the person and the time, say: corpus.needles), and how often any does",
    }
