"""A real Database on the session's embedded PostgreSQL, per test (pools are loop-bound)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from somastack.config import Settings
from somastack.store import Database


@pytest_asyncio.fixture
async def database(settings: Settings, database_url: str) -> AsyncIterator[Database]:
    db = await Database.open(settings.model_copy(update={"pool_min": 1, "pool_max": 6}))
    try:
        yield db
    finally:
        await db.close()
