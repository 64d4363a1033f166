"""Tenants: the unit of isolation. Every tenant-owned row carries the tenant's id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from somastack.errors import Conflict, NotFound

_COLUMNS = "id, name, plan, limits, billing_profile, residency, disabled_at, created_at"


@dataclass
class TenantSpec:
    id: str
    name: str
    plan: str = "free"
    limits: dict[str, Any] = field(default_factory=dict)
    billing_profile: dict[str, Any] = field(default_factory=dict)
    residency: str | None = None


async def create(conn: psycopg.AsyncConnection, spec: TenantSpec) -> dict[str, Any]:
    """Insert a tenant; Conflict (naming `id`) when it exists."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"INSERT INTO tenants (id, name, plan, limits, billing_profile, residency) "
        f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}",
        (spec.id, spec.name, spec.plan, Jsonb(spec.limits), Jsonb(spec.billing_profile),
         spec.residency),
    )
    row = await cur.fetchone()
    if row is None:
        raise Conflict(f"tenant {spec.id!r} already exists", field="id")
    return row


async def get(conn: psycopg.AsyncConnection, tenant_id: str) -> dict[str, Any]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_COLUMNS} FROM tenants WHERE id = %s", (tenant_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} not found", field="tenant_id")
    return row


async def list_all(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_COLUMNS} FROM tenants ORDER BY created_at, id")
    return list(await cur.fetchall())


async def set_disabled(conn: psycopg.AsyncConnection, tenant_id: str, disabled: bool
                       ) -> dict[str, Any]:
    """Disable (every credential of the tenant stops working) or re-enable a tenant."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"UPDATE tenants SET disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now()) END "
        f"WHERE id = %s RETURNING {_COLUMNS}", (disabled, tenant_id))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} not found", field="tenant_id")
    return row
