"""Reading the usage ledger: totals over a time range, grouped (GET /v1/usage, `soma usage`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from somastack.errors import InvalidInput
from somastack.ledger.budgets import fetch_rows
from somastack.ledger.usage import DIMENSIONS
from somastack.store import Database

GROUPS = {
    "agent": "agent",
    "session": "session",
    "minute": "ts_minute",
    "hour": "date_trunc('hour', ts_minute)",
    "day": "date_trunc('day', ts_minute)",
}


async def usage_report(
    db: Database, tenant: str, *, start: datetime | None = None, end: datetime | None = None,
    group_by: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Summed usage per group in [start, end); one row when `group_by` is empty."""
    groups = group_by or []
    for g in groups:
        if g not in GROUPS:
            raise InvalidInput(f"unknown group {g!r}; expected any of {', '.join(GROUPS)}",
                               field="group_by")
    if start is not None and end is not None and start >= end:
        raise InvalidInput("must be before `to`", field="from")
    keys = [f"{GROUPS[g]} AS {g}" for g in dict.fromkeys(groups)]
    sums = [f"coalesce(sum({d}), 0){'' if d == 'cost_cents' else '::bigint'} AS {d}"
            for d in DIMENSIONS]
    where = ["tenant_id = %(tenant)s"]
    if start is not None:
        where.append("ts_minute >= %(start)s")
    if end is not None:
        where.append("ts_minute < %(end)s")
    sql = f"SELECT {', '.join(keys + sums)} FROM usage_ledger WHERE {' AND '.join(where)}"
    if keys:
        order = ", ".join(str(i) for i in range(1, len(keys) + 1))
        sql += f" GROUP BY {order} ORDER BY {order}"
    async with db.tenant(tenant) as conn:
        rows = await fetch_rows(conn, sql, {"tenant": tenant, "start": start, "end": end})
    return rows
