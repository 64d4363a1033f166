"""Tenant transactions that wait on the server as few times as they can (pipeline mode).

`Database.tenant` spends a round trip on BEGIN and the tenant binding, one per statement and
one on COMMIT. In pipeline mode statements go out without waiting, and the client waits only
where it reads a result (and once at the end): BEGIN and the binding (role and
`app.tenant_id`, transaction-local) travel with the first statement, COMMIT with the last.
`run_one` is a transaction of one statement in one round trip; its rows are read after COMMIT.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

from somastack.store.database import Database

_BIND = "SELECT set_config('role', %s, true), set_config('app.tenant_id', %s, true)"
_BIND_GENERIC = _BIND + ", set_config('plan_cache_mode', 'force_generic_plan', true)"


@contextlib.asynccontextmanager
async def pipelined(db: Database, tenant_id: str, *, rls: bool = True, generic_plans: bool = False
                    ) -> AsyncIterator[psycopg.AsyncConnection]:
    """A tenant transaction (see Database.tenant for `rls`) in pipeline mode. An error may
    surface at the next read or at the end rather than at the statement that caused it.

    `generic_plans`: prepared statements run on their generic plan from the first execution
    (plan_cache_mode, for this transaction only), for statements whose plan does not depend on
    their parameters' values; PostgreSQL otherwise plans each of the first five executions on
    every connection anew, and keeps doing so where the generic plan's estimate looks worse."""
    async with db.pool.connection() as conn:
        try:
            async with conn.pipeline():
                await conn.execute("BEGIN")
                await conn.execute(_BIND_GENERIC if generic_plans else _BIND,
                                   ("soma_app" if rls else "none", tenant_id))
                yield conn
                await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the pool drops it
                await conn.execute("ROLLBACK")
            raise


async def run_one(db: Database, tenant_id: str, query: str, params: Any = None, *,
                  rls: bool = True) -> list[dict[str, Any]]:
    """Run `query` as the tenant in one round trip; its rows, if it returns any."""
    async with pipelined(db, tenant_id, rls=rls) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, params)
    return await cur.fetchall() if cur.description else []
