"""Database.tenant: one transaction bound to one tenant, all or nothing, and nothing left behind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from somastack.config import Settings
from somastack.store import Database


@pytest_asyncio.fixture
async def database(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    db = await Database.open(Settings(home=tmp_path, database_url=database_url, pool_min=1,
                                      pool_max=1))  # one connection: every block reuses it
    yield db
    await db.close()


async def receipts(db: Database, tenant: str) -> int:
    async with db.system() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM forget_receipts WHERE tenant_id = %s",
                                 (tenant,))
        row = await cur.fetchone()
        assert row is not None
        return int(row["n"])


async def write_receipt(db: Database, tenant: str) -> None:
    async with db.tenant(tenant) as conn:
        await conn.execute("INSERT INTO forget_receipts (id, tenant_id, criteria, deleted) "
                           "VALUES (%s, %s, '{}', 0)", (uuid.uuid4(), tenant))


@pytest.mark.asyncio
async def test_an_error_rolls_the_whole_block_back(database: Database) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ZeroDivisionError):
        async with database.tenant(tenant) as conn:
            await conn.execute("INSERT INTO forget_receipts (id, tenant_id, criteria, deleted) "
                               "VALUES (%s, %s, '{}', 0)", (uuid.uuid4(), tenant))
            raise ZeroDivisionError
    assert await receipts(database, tenant) == 0
    await write_receipt(database, tenant)  # the same connection, usable again
    assert await receipts(database, tenant) == 1


@pytest.mark.asyncio
async def test_the_binding_ends_with_the_block(database: Database) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with database.tenant(tenant) as conn:
        cur = await conn.execute("SELECT current_user AS who, current_setting('app.tenant_id') AS t")
        assert await cur.fetchone() == {"who": "soma_app", "t": tenant}
    async with database.system() as conn:  # same pooled connection, next transaction
        cur = await conn.execute("SELECT current_user = session_user AS owner, "
                                 "coalesce(current_setting('app.tenant_id', true), '') AS t")
        assert await cur.fetchone() == {"owner": True, "t": ""}


@pytest.mark.asyncio
async def test_row_level_security_holds_inside_a_tenant_block(database: Database) -> None:
    mine, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    await write_receipt(database, other)
    async with database.tenant(mine) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM forget_receipts WHERE tenant_id = %s",
                                 (other,))
        assert await cur.fetchone() == {"n": 0}  # no tenant predicate of ours would have hidden it
