"""The bridge planner: a ranked path of memories from one cue to another.

1. Each cue (text, or a memory id) selects its nearest memories; the node set is those plus
   their link neighbours up to max_hops − 1 hops (capped).
2. Edges: links, at the FRGO traversal cost 1/(C·w) (frgo.py), both directions; and similarity
   edges to each node's 3 nearest nodes with cos ≥ 0.3, at cost 1 + 2(1 − cos), never cheaper
   than a default link, so explicit links are preferred.
3. The cues become distributions a, b = softmax(cos/τ) over the nodes (one-hot for a memory id);
   Sinkhorn couples them under the graph's shortest-path costs (sinkhorn.py). The start is
   argmax a, and the targets are ranked by how much of the start's mass the plan sends them.
4. Each target's path is the cheapest with at most max_hops edges (hop-bounded Bellman–Ford).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from psycopg.rows import dict_row
from scipy.sparse.csgraph import dijkstra

from somastack.brain import frgo, sinkhorn
from somastack.brain.embed import AsyncEmbedder
from somastack.brain.model import LIVE_M
from somastack.errors import NotFound
from somastack.store import Database

SIM_KNN, SIM_FLOOR, CUE_TEMPERATURE, PLAN_EPSILON, TARGETS = 3, 0.3, 0.05, 0.05, 3


@dataclass
class Cue:
    text: str | None = None
    memory_id: UUID | None = None


def similarity_cost(cos: np.ndarray) -> np.ndarray:
    """1 + 2(1 − cos): ≥ 1 (a default link's cost), growing as the memories drift apart."""
    return 1.0 + 2.0 * (1.0 - cos)


def edge_costs(vectors: np.ndarray, links: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(n × n) costs (inf = no edge) and edge kinds (1 = link, 2 = similarity); links given as
    (i, j, cost) are undirected and win over a similarity edge when cheaper."""
    n = len(vectors)
    cost = np.full((n, n), np.inf)
    kind = np.zeros((n, n), dtype=np.int8)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    for i in range(n):
        for j in np.argsort(-sims[i])[:SIM_KNN]:
            if sims[i, j] >= SIM_FLOOR:
                c = float(similarity_cost(sims[i, j]))
                for u, v in ((i, j), (j, i)):
                    if c < cost[u, v]:
                        cost[u, v], kind[u, v] = c, 2
    for i, j, c in links:
        for u, v in ((i, j), (j, i)):
            if u != v and c <= cost[u, v]:
                cost[u, v], kind[u, v] = c, 1
    return cost, kind


def bounded_path(cost: np.ndarray, start: int, target: int, max_hops: int) -> tuple[list[int], float]:
    """The cheapest path start → target with at most max_hops edges (Bellman–Ford by hop count);
    ([], inf) when there is none."""
    n = cost.shape[0]
    dist = np.full(n, np.inf)
    dist[start] = 0.0
    preds: list[np.ndarray] = []
    best_hops, best = (0, 0.0) if start == target else (-1, np.inf)
    for hop in range(1, max_hops + 1):
        via = dist[:, None] + cost  # via[u, v]: reach v through u
        pred = np.argmin(via, axis=0)
        new = via[pred, np.arange(n)]
        keep = dist <= new
        pred = np.where(keep, -1, pred)
        dist = np.where(keep, dist, new)
        preds.append(pred)
        if dist[target] < best:
            best, best_hops = float(dist[target]), hop
    if best_hops < 0:
        return [], np.inf
    path, node = [target], target
    for hop in range(best_hops - 1, -1, -1):
        p = preds[hop][node]
        if p >= 0:
            node = int(p)
            path.append(node)
    path.reverse()
    return path, best


def cue_distribution(vectors: np.ndarray, cue: np.ndarray | int) -> np.ndarray:
    """softmax(cos/τ) over the nodes for a text cue's vector; one-hot for a node index."""
    if isinstance(cue, int):
        out = np.zeros(len(vectors))
        out[cue] = 1.0
        return out
    return sinkhorn.softmax(vectors @ cue, CUE_TEMPERATURE)


async def _resolve(conn: psycopg.AsyncConnection[Any], embedder: AsyncEmbedder, tenant: str, cue: Cue,
                   name: str) -> tuple[np.ndarray, UUID | None]:
    if cue.memory_id is None:
        assert cue.text is not None
        return (await embedder.embed([cue.text]))[0], None
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT embedding FROM memories m WHERE tenant_id = %s AND id = %s AND {LIVE_M}",
        (tenant, cue.memory_id))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"memory {cue.memory_id} not found", field=name)
    return row["embedding"].to_numpy(), cue.memory_id


async def _nodes(conn: psycopg.AsyncConnection[Any], tenant: str, namespace: str | None,
                 cues: list[np.ndarray], fixed: list[UUID], per_cue: int, max_hops: int, cap: int,
                 dims: int) -> list[UUID]:
    ns = "AND m.namespace = %(ns)s" if namespace is not None else ""
    nodes: dict[UUID, None] = dict.fromkeys(fixed)
    for q in cues:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT m.id FROM memories m WHERE m.tenant_id = %(t)s AND {LIVE_M} {ns} "
            f"AND vector_dims(m.embedding) = {dims} "
            f"ORDER BY (m.embedding::vector({dims})) <=> %(q)s::vector({dims}) LIMIT %(n)s",
            {"t": tenant, "ns": namespace, "q": q, "n": per_cue})
        nodes.update(dict.fromkeys(r["id"] for r in await cur.fetchall()))
    frontier = list(nodes)
    for _ in range(max_hops - 1):
        if not frontier or len(nodes) >= cap:
            break
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT src AS a, dst AS b FROM memory_links WHERE tenant_id = %(t)s AND "
            "(src = ANY(%(f)s) OR dst = ANY(%(f)s)) ORDER BY created_at LIMIT %(cap)s",
            {"t": tenant, "f": frontier, "cap": cap * 4})
        found = [x for r in await cur.fetchall() for x in (r["a"], r["b"]) if x not in nodes]
        frontier = list(dict.fromkeys(found))[: cap - len(nodes)]
        nodes.update(dict.fromkeys(frontier))
    return list(nodes)


async def plan(db: Database, embedder: AsyncEmbedder, tenant: str, source: Cue, target: Cue, *,
               namespace: str | None, max_hops: int, per_cue: int, max_nodes: int,
               rule: frgo.Conductance) -> dict[str, Any]:
    """Ranked paths between two cues; see the module docstring."""
    async with db.tenant(tenant) as conn:
        qa, ida = await _resolve(conn, embedder, tenant, source, "from")
        qb, idb = await _resolve(conn, embedder, tenant, target, "to")
        ids = await _nodes(conn, tenant, namespace, [qa, qb], [x for x in (ida, idb) if x], per_cue,
                           max_hops, max_nodes, embedder.dims)
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT m.id, m.namespace, m.content, m.event_time, m.embedding FROM memories m "
            f"WHERE m.tenant_id = %s AND m.id = ANY(%s) AND {LIVE_M}", (tenant, ids))
        rows = {r["id"]: r for r in await cur.fetchall()}
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT l.src, l.dst, l.weight, coalesce(c.conductance, %s) AS conductance "
            "FROM memory_links l LEFT JOIN link_conductance c "
            "  ON (c.tenant_id, c.src, c.dst, c.rel) = (l.tenant_id, l.src, l.dst, l.rel) "
            "WHERE l.tenant_id = %s AND l.src = ANY(%s) AND l.dst = ANY(%s)",
            (rule.initial, tenant, list(rows), list(rows)))
        link_rows = await cur.fetchall()
    order = [i for i in ids if i in rows]
    empty = {"paths": [], "nodes": len(order), "transport": None}
    if len(order) < 2:
        return empty
    index = {m: k for k, m in enumerate(order)}
    vectors = np.stack([rows[m]["embedding"].to_numpy() for m in order]).astype(np.float64)
    link_cost = frgo.traversal_cost(np.array([r["conductance"] for r in link_rows], dtype=np.float64),
                                    np.array([r["weight"] for r in link_rows], dtype=np.float64))
    cost, kind = edge_costs(vectors, [(index[r["src"]], index[r["dst"]], float(c))
                                      for r, c in zip(link_rows, link_cost, strict=True) if np.isfinite(c)])
    a = cue_distribution(vectors, index[ida] if ida else qa)
    b = cue_distribution(vectors, index[idb] if idb else qb)
    dist = dijkstra(np.where(np.isfinite(cost), cost, 0.0), directed=True)
    finite = dist[np.isfinite(dist)]
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    transport = sinkhorn.sinkhorn(a, b, np.where(np.isfinite(dist), dist / scale, 2.0),
                                  epsilon=PLAN_EPSILON, tol=1e-6, max_iter=2000)
    start = int(np.argmax(a))
    mass = transport.plan[start]
    paths: list[dict[str, Any]] = []
    for t in np.argsort(-mass, kind="stable"):
        if len(paths) == TARGETS or mass[t] <= 0:
            break
        nodes, total = bounded_path(cost, start, int(t), max_hops)
        if len(nodes) < 2:
            continue
        steps = [{"id": order[n], "content": rows[order[n]]["content"],
                  "namespace": rows[order[n]]["namespace"], "event_time": rows[order[n]]["event_time"],
                  "via": "start" if k == 0 else ("link" if kind[nodes[k - 1], n] == 1 else "similarity"),
                  "step_cost": 0.0 if k == 0 else round(float(cost[nodes[k - 1], n]), 6)}
                 for k, n in enumerate(nodes)]
        paths.append({"memories": steps, "cost": round(total, 6), "hops": len(nodes) - 1,
                      "mass": round(float(mass[t] / max(a[start], 1e-300)), 6)})
    return {"paths": paths, "nodes": len(order),
            "transport": {"iterations": transport.iterations, "error": transport.error,
                          "converged": transport.converged}}
