"""Connection to PostgreSQL: embedded or by URL, migrated, with a psycopg 3 async pool.

Tenant work runs in `Database.tenant(tenant_id)`: one transaction as the role `soma_app` with
`app.tenant_id` set, so row-level security backs up the tenant filter every query carries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from somastack.config import Settings
from somastack.errors import StoreUnavailable
from somastack.store import embedded, migrate


def resolve_url(settings: Settings) -> tuple[str, bool]:
    """The database URL, starting the embedded server when no URL is configured."""
    if settings.database_url:
        return settings.database_url, False
    return embedded.start(settings.home_dir), True


async def _configure(conn: psycopg.AsyncConnection) -> None:
    await register_vector_async(conn)
    # pgvector HNSW search breadth, and keep scanning when filters drop rows (pgvector ≥ 0.8)
    await conn.execute("SET hnsw.ef_search = 50")
    await conn.execute("SET hnsw.iterative_scan = relaxed_order")
    await conn.commit()
    conn.row_factory = dict_row  # type: ignore[assignment]


@dataclass
class Database:
    url: str
    embedded: bool
    pool: AsyncConnectionPool

    @classmethod
    async def open(cls, settings: Settings, *, run_migrations: bool = True) -> Database:
        """Resolve, migrate and open a pool; raise StoreUnavailable when that fails."""
        try:
            url, is_embedded = resolve_url(settings)
            if run_migrations:
                migrate.migrate(url)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        pool = AsyncConnectionPool(
            url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            configure=_configure,
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        return cls(url=url, embedded=is_embedded, pool=pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tenant(self, tenant_id: str, *, rls: bool = True) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction scoped to one tenant (RLS role + tenant setting).

        `rls=False` keeps the owner's role but still binds `app.tenant_id`, for read queries that
        apply the policy's predicate `tenant_id = current_setting('app.tenant_id')` themselves:
        under RLS, PostgreSQL may not use an index for an operator that is not leakproof (full
        text `@@`, pgvector `<=>`), and recall would scan the whole table.
        """
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT set_config('role', %s, true), set_config('app.tenant_id', %s, true)",
                ("soma_app" if rls else "none", tenant_id),
            )
            yield conn

    @asynccontextmanager
    async def system(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction with the owner's rights, for health, metrics and maintenance only."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn
