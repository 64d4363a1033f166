"""Fusion weights θ per tenant, learnt from feedback by projected online gradient ascent.

The recall score of memory k is s_k = Σ_f θ_f·x_kf. Given a trace (the ranked memories with
their feature values x_k) and the memories the caller used, U, with reward r ∈ [−1, 1], we
take one step on the listwise log-likelihood of the used memories under p_k ∝ exp(s_k/τ):

    g_f = (1/|U|) Σ_{u∈U} x_uf − Σ_k p_k x_kf          (∂/∂θ_f of mean_u log p_u, times τ)
    θ ← Π_B(θ + η·r·g)

where Π_B clips each θ_f into its bounds [lo_f, hi_f]. Every θ is stored as a new version (the
history is kept), and a rollback writes an earlier θ again as the newest version. Feature names
are read from `recall.FEATURES` at run time; version 0 is `recall.DEFAULT_WEIGHTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from somastack.brain import recall
from somastack.config import Settings
from somastack.errors import InvalidInput, NotFound

Bounds = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class WeightsVersion:
    version: int
    weights: dict[str, float]
    reason: str
    created_at: datetime | None = None
    trace_id: UUID | None = None


def feature_names() -> list[str]:
    """The weighted recall features, as recall defines them now."""
    return list(recall.FEATURES)


def bounds_from(settings: Settings) -> Bounds:
    """[lo_f, hi_f] per feature: the per-feature override, else [brain_weight_min, brain_weight_max]."""
    out: Bounds = {}
    for name in feature_names():
        lo, hi = settings.brain_weight_bounds.get(name, (settings.brain_weight_min,
                                                         settings.brain_weight_max))
        if not 0 <= lo <= hi:
            raise InvalidInput(f"bounds of {name!r} must satisfy 0 ≤ lo ≤ hi, got [{lo}, {hi}]",
                               field="brain_weight_bounds")
        out[name] = (float(lo), float(hi))
    return out


def project(theta: dict[str, float], bounds: Bounds) -> dict[str, float]:
    """Π_B: each known feature's weight clipped into its bounds (missing ones from the defaults)."""
    out = {}
    for name, (lo, hi) in bounds.items():
        value = theta.get(name, recall.DEFAULT_WEIGHTS.get(name, lo))
        out[name] = float(min(max(value, lo), hi)) if np.isfinite(value) else lo
    return out


def gradient(x: np.ndarray, used: np.ndarray, theta: np.ndarray, temperature: float) -> np.ndarray:
    """g = mean_{u∈U} x_u − Σ_k p_k x_k with p = softmax(Xθ/τ); NaN features count as unknown (0).

    x: (n, F) feature values, used: (n,) bool mask, theta: (F,). No used item → zero gradient.
    """
    if not used.any():
        return np.zeros(x.shape[1])
    known = np.nan_to_num(x, nan=0.0)
    s = known @ theta / temperature
    p = np.exp(s - s.max())
    p /= p.sum()
    return np.asarray(known[used].mean(axis=0) - p @ known)


def step(theta: dict[str, float], x: np.ndarray, used: np.ndarray, reward: float, *,
         rate: float, temperature: float, bounds: Bounds) -> dict[str, float]:
    """Π_B(θ + η·r·g) over the features in `bounds` (columns of x in the same order)."""
    names = list(bounds)
    t = np.array([theta[n] for n in names])
    moved = t + rate * reward * gradient(x, used, t, temperature)
    return project(dict(zip(names, moved.tolist(), strict=True)), bounds)


async def lock(conn: psycopg.AsyncConnection[Any], tenant: str) -> None:
    """Serialise θ writers of one tenant until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 3))", (f"theta|{tenant}",))


async def current(conn: psycopg.AsyncConnection[Any], tenant: str, bounds: Bounds) -> WeightsVersion:
    """The newest θ of the tenant, projected into today's bounds (version 0: the defaults)."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT version, weights, reason, created_at, trace_id FROM brain_weights "
        "WHERE tenant_id = %s ORDER BY version DESC LIMIT 1", (tenant,))
    row = await cur.fetchone()
    if row is None:
        return WeightsVersion(0, project(dict(recall.DEFAULT_WEIGHTS), bounds), "defaults")
    return WeightsVersion(row["version"], project(row["weights"], bounds), row["reason"],
                          row["created_at"], row["trace_id"])


async def save(conn: psycopg.AsyncConnection[Any], tenant: str, theta: dict[str, float], reason: str,
               trace_id: UUID | None = None) -> WeightsVersion:
    """Store θ as the tenant's next version (call under `lock`)."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        "INSERT INTO brain_weights (tenant_id, version, weights, reason, trace_id) "
        "SELECT %(t)s, coalesce(max(version), 0) + 1, %(w)s, %(r)s, %(tr)s FROM brain_weights "
        "WHERE tenant_id = %(t)s RETURNING version, created_at",
        {"t": tenant, "w": Jsonb(theta), "r": reason, "tr": trace_id})
    row = await cur.fetchone()
    assert row is not None
    return WeightsVersion(row["version"], theta, reason, row["created_at"], trace_id)


async def history(conn: psycopg.AsyncConnection[Any], tenant: str, limit: int) -> list[WeightsVersion]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT version, weights, reason, created_at, trace_id FROM brain_weights "
        "WHERE tenant_id = %s ORDER BY version DESC LIMIT %s", (tenant, limit))
    return [WeightsVersion(r["version"], r["weights"], r["reason"], r["created_at"], r["trace_id"])
            for r in await cur.fetchall()]


async def rollback(conn: psycopg.AsyncConnection[Any], tenant: str, version: int, bounds: Bounds
                   ) -> WeightsVersion:
    """Write θ of `version` (0 = the defaults) again as the newest version."""
    await lock(conn, tenant)
    if version == 0:
        theta: dict[str, Any] = dict(recall.DEFAULT_WEIGHTS)
    else:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT weights FROM brain_weights WHERE tenant_id = %s AND version = %s", (tenant, version))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"weights version {version} not found", field="version")
        theta = row["weights"]
    return await save(conn, tenant, project(theta, bounds), f"rollback to v{version}")
