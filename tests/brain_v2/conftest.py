"""Brain v2 fixtures: an async Database on the session's PostgreSQL, the real embedder, Redis."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from somastack.brain.embed import MiniLMEmbedder
from somastack.config import Settings
from somastack.store import Database

REDIS_URL = os.environ.get("SOMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest_asyncio.fixture
async def adb(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    """An async pool on the test session's database (migrated if the server has not yet)."""
    db = await Database.open(Settings(home=tmp_path, database_url=database_url, pool_min=1, pool_max=2))
    yield db
    await db.close()


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()
