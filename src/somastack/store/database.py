"""Connection to PostgreSQL: embedded or by URL, migrated, with a psycopg 3 async pool.

Tenant work runs in `Database.tenant(tenant_id)`: one transaction as the role `soma_app` with
`app.tenant_id` set, so row-level security backs up the tenant filter every query carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from somastack.config import Settings
from somastack.errors import StoreUnavailable
from somastack.store import embedded, migrate

log = logging.getLogger("somastack.store")
LISTEN_RETRY_S = 1.0


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
    conn.row_factory = dict_row  # type: ignore[assignment]


@dataclass
class Database:
    url: str
    embedded: bool
    pool: AsyncConnectionPool
    # Admission for expensive read queries (recall's candidate query): at most
    # settings.heavy_queries run at once; the rest wait here rather than in PostgreSQL. With 8
    # recalls in flight on 2 cores, 8 backends crowded out the event loop and the embedding
    # thread, and recall p95 was ~11% higher, throughput ~5% lower (docs/recall.md, Speed).
    heavy: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(3))
    listeners: dict[str, asyncio.Task[None]] = field(default_factory=dict)

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
            kwargs={"autocommit": True},  # transactions are explicit: tenant() and system()
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            configure=_configure,
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        return cls(url=url, embedded=is_embedded, pool=pool,
                   heavy=asyncio.Semaphore(settings.heavy_queries))

    async def close(self) -> None:
        for task in self.listeners.values():
            task.cancel()
        for task in self.listeners.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.listeners.clear()
        await self.pool.close()

    def listen(self, channel: str, on_message: Callable[[str | None], None]) -> None:
        """Call on_message(payload) for every NOTIFY on `channel` until close(), from a connection
        of its own; on_message(None) whenever some may have been missed (on connecting, after a
        drop). Idempotent per channel."""
        if channel not in self.listeners:
            self.listeners[channel] = asyncio.get_running_loop().create_task(
                self._listen(channel, on_message))

    async def _listen(self, channel: str, on_message: Callable[[str | None], None]) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    on_message(None)
                    async for note in conn.notifies():
                        on_message(note.payload)
            except (OSError, psycopg.Error) as exc:
                log.warning("listening on %s failed, retrying: %s", channel, exc)
            on_message(None)
            await asyncio.sleep(LISTEN_RETRY_S)

    @asynccontextmanager
    async def tenant(self, tenant_id: str, *, rls: bool = True) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction scoped to one tenant (RLS role + tenant setting).

        `rls=False` keeps the owner's role but still binds `app.tenant_id`, for read queries that
        apply the policy's predicate `tenant_id = current_setting('app.tenant_id')` themselves:
        under RLS, PostgreSQL may not use an index for an operator that is not leakproof (full
        text `@@`, pgvector `<=>`), and recall would scan the whole table.

        BEGIN and the binding travel in one round trip (one simple-protocol query).
        """
        async with self.pool.connection() as conn:
            await conn.execute(sql.SQL(
                "BEGIN; SELECT set_config('role', {}, true), set_config('app.tenant_id', {}, true)"
            ).format(sql.Literal("soma_app" if rls else "none"), sql.Literal(tenant_id)))
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(psycopg.Error):  # a broken connection: the pool drops it
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    @asynccontextmanager
    async def system(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction with the owner's rights, for health, metrics and maintenance only."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn
