"""One statement in its own tenant transaction, in one round trip.

`Database.tenant` spends a round trip on BEGIN and the tenant binding, one per statement and
one on COMMIT. A transaction of a single statement needs none of those waits: in pipeline mode
BEGIN, the binding (role and `app.tenant_id`, transaction-local), the statement and COMMIT go
out together and the client waits once. The rows are read after COMMIT.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg.rows import dict_row

from somastack.store.database import Database

_BIND = "SELECT set_config('role', %s, true), set_config('app.tenant_id', %s, true)"


async def run_one(db: Database, tenant_id: str, query: str, params: Any = None, *,
                  rls: bool = True) -> list[dict[str, Any]]:
    """Run `query` as the tenant (see Database.tenant for `rls`); its rows, if it returns any."""
    async with db.pool.connection() as conn:
        try:
            async with conn.pipeline():
                await conn.execute("BEGIN")
                await conn.execute(_BIND, ("soma_app" if rls else "none", tenant_id))
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(query, params)
                await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the pool drops it
                await conn.execute("ROLLBACK")
            raise
        return await cur.fetchall() if cur.description else []
