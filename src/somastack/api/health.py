"""Liveness, readiness and Prometheus metrics.

`/healthz` and `/readyz` say nothing about anyone's data and need no credential. `/metrics` does:
its figures are the whole server's (memories stored, requests by route), so any tenant could
watch another's activity in them (subtracting its own); it is the platform's, and answers only
a platform-admin credential (`Authorization: Bearer $(cat ~/.soma/admin.key)`, or a Prometheus
`authorization: {credentials_file: …}`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row

from somastack.api.deps import State, scoped
from somastack.api.problems import problem
from somastack.brain.model import LIVE
from somastack.governance.principal import PLATFORM_ADMIN, Principal
from somastack.store import migrate

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(s: State) -> Any:
    """Database reachable, migrations applied, embedder loaded; 503 problem otherwise."""
    checks: dict[str, Any] = {"embedder": s.embedder.id}
    try:
        async with s.db.system() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute("SELECT version FROM schema_migrations")
            have = {r["version"] for r in await cur.fetchall()}
        missing = [m.version for m in migrate.available() if m.version not in have]
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not missing else f"pending: {', '.join(missing)}"
    except Exception as exc:  # any failure to reach the database means "not ready"
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    if checks.get("database") == "ok" and checks.get("migrations") == "ok":
        return {"status": "ready", "checks": checks}
    return problem(503, "not-ready", "Not ready", "; ".join(f"{k}: {v}" for k, v in checks.items()),
                   checks=checks)


@router.get("/metrics")
async def metrics(s: State, _: Annotated[Principal, scoped(PLATFORM_ADMIN)]) -> Response:
    """Prometheus text format; platform admins only (the figures are every tenant's)."""
    async with s.db.system() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT count(*) AS n FROM memories WHERE {LIVE}")
        row = await cur.fetchone()
    m = s.metrics
    m.memories.set(row["n"] if row else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
