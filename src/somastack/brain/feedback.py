"""Feedback on a recall trace: one transaction moves θ, the density matrix ρ and link conductance.

The trace names the ranked memories and their feature values; the caller says which of them it
used and how good the outcome was (reward ∈ [−1, 1]). In one transaction, so a failure writes
nothing: θ takes a projected gradient step (weights.py) and is stored as a new version; ρ of the
trace's namespace absorbs the used memories' vectors (density.py); the conductance of links
between returned memories follows the FRGO rule (frgo.py); the trace is marked as answered,
and a second feedback on it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from psycopg.rows import dict_row

from somastack.brain import density, frgo, weights
from somastack.brain.context import ALL_NAMESPACES, load_density
from somastack.config import Settings
from somastack.errors import Conflict, InvalidInput, NotFound
from somastack.store import Database
from somastack.store.retention import purge_older_than


@dataclass
class FeedbackResult:
    trace_id: UUID
    weights: dict[str, float]
    version: int
    previous_version: int
    density_updated: bool
    links_updated: int


def conductance_rule(settings: Settings) -> frgo.Conductance:
    return frgo.Conductance(settings.frgo_eta, settings.frgo_alpha, settings.frgo_decay,
                            settings.frgo_min, settings.frgo_max, settings.frgo_initial)


async def _update_density(conn: psycopg.AsyncConnection[Any], tenant: str, namespace: str | None,
                          used: list[UUID], rate: float) -> bool:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT embedding FROM memories WHERE tenant_id = %s AND id = ANY(%s)", (tenant, used))
    vecs = [r["embedding"].to_numpy() for r in await cur.fetchall()]
    if not vecs:
        return False
    dims = len(vecs[0])
    rho = await load_density(conn, tenant, namespace, dims)
    rho = density.update_density(rho if rho is not None else density.maximally_mixed(dims),
                                 np.stack(vecs), rate)
    await conn.execute(
        "INSERT INTO brain_density (tenant_id, namespace, dims, rho, updates) VALUES (%s, %s, %s, %s, 1) "
        "ON CONFLICT (tenant_id, namespace) DO UPDATE SET rho = EXCLUDED.rho, dims = EXCLUDED.dims, "
        "updates = brain_density.updates + 1, updated_at = now()",
        (tenant, namespace or ALL_NAMESPACES, dims, density.to_bytes(rho)))
    return True


async def _update_conductance(conn: psycopg.AsyncConnection[Any], tenant: str, returned: list[UUID],
                              used: set[UUID], reward: float, rule: frgo.Conductance) -> int:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT l.src, l.dst, l.rel, coalesce(c.conductance, %s) AS conductance "
        "FROM memory_links l LEFT JOIN link_conductance c "
        "  ON (c.tenant_id, c.src, c.dst, c.rel) = (l.tenant_id, l.src, l.dst, l.rel) "
        "WHERE l.tenant_id = %s AND l.src = ANY(%s) AND l.dst = ANY(%s) "
        "ORDER BY l.src, l.dst, l.rel FOR UPDATE OF l",
        (rule.initial, tenant, returned, returned))
    links = await cur.fetchall()
    if not links:
        return 0
    src_used = np.array([r["src"] in used for r in links])
    dst_used = np.array([r["dst"] in used for r in links])
    c = frgo.update_conductance(np.array([r["conductance"] for r in links], dtype=np.float64),
                                frgo.link_flow(src_used, dst_used, reward), rule)
    async with conn.cursor() as cur2:
        await cur2.executemany(
            "INSERT INTO link_conductance (tenant_id, src, dst, rel, conductance, updates) "
            "VALUES (%s, %s, %s, %s, %s, 1) ON CONFLICT (tenant_id, src, dst, rel) DO UPDATE SET "
            "conductance = EXCLUDED.conductance, updates = link_conductance.updates + 1, updated_at = now()",
            [(tenant, r["src"], r["dst"], r["rel"], float(v)) for r, v in zip(links, c, strict=True)])
    return len(links)


PURGE_BATCH = 5000  # traces deleted per statement: short transactions, no long lock


async def purge_traces(db: Database, older_than_days: float) -> int:
    """Delete every tenant's traces older than the retention (settings.brain_trace_days), in
    batches; returns how many. Feedback on a deleted trace is 404 `trace_id`."""
    return await purge_older_than(db, "brain_traces", ("id",), older_than_days, PURGE_BATCH)


async def feedback(db: Database, settings: Settings, tenant: str, trace_id: UUID, used_ids: list[UUID],
                   reward: float) -> FeedbackResult:
    """Learn from how the memories of one trace served; see the module docstring."""
    bounds = weights.bounds_from(settings)
    async with db.tenant(tenant) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT namespace, items, feedback_at FROM brain_traces WHERE tenant_id = %s AND id = %s "
            "FOR UPDATE", (tenant, trace_id))
        trace = await cur.fetchone()
        if trace is None:
            raise NotFound(f"trace {trace_id} not found (traces are kept "
                           f"{settings.brain_trace_days:g} days)", field="trace_id")
        if trace["feedback_at"] is not None:
            raise Conflict(f"trace {trace_id} already has feedback", field="trace_id")
        returned = [UUID(it["id"]) for it in trace["items"]]
        for i, u in enumerate(used_ids):
            if u not in returned:
                raise InvalidInput(f"memory {u} is not among the trace's memories", field=f"used_ids[{i}]")
        await weights.lock(conn, tenant)
        before = await weights.current(conn, tenant, bounds)
        names = list(bounds)
        x = np.array([[it["features"].get(f, np.nan) for f in names] for it in trace["items"]],
                     dtype=np.float64).reshape(len(returned), len(names))
        used = np.array([r in set(used_ids) for r in returned], dtype=bool)
        theta = weights.step(before.weights, x, used, reward, rate=settings.brain_learning_rate,
                             temperature=settings.brain_temperature, bounds=bounds)
        after = before
        if theta != before.weights:
            after = await weights.save(conn, tenant, theta, "feedback", trace_id)
        density_updated = bool(used_ids) and settings.brain_density and reward > 0 and \
            await _update_density(conn, tenant, trace["namespace"], list(used_ids),
                                  settings.brain_density_rate)
        links = (await _update_conductance(conn, tenant, returned, set(used_ids), reward,
                                           conductance_rule(settings))
                 if settings.brain_frgo else 0)
        await conn.execute(
            "UPDATE brain_traces SET feedback_at = now(), reward = %s, used_ids = %s "
            "WHERE tenant_id = %s AND id = %s", (reward, list(used_ids), tenant, trace_id))
    return FeedbackResult(trace_id, after.weights, after.version, before.version, density_updated, links)
