"""Fixtures of the agent tests: the real local model, a real Database, a closed loopback port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from somastack.agent.llm import LocalProvider
from somastack.config import Settings
from somastack.store import Database


@pytest.fixture(scope="session")
def local_llm(settings: Settings) -> LocalProvider:
    """The local provider (SmolLM2-135M via llama.cpp), loaded once for the whole run."""
    return LocalProvider(settings)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def database(settings: Settings, database_url: str) -> AsyncIterator[Database]:
    """A migrated pool on the session's embedded PostgreSQL, bound to this test's event loop."""
    db = await Database.open(settings.model_copy(update={"pool_min": 1, "pool_max": 4}))
    try:
        yield db
    finally:
        await db.close()


def _live(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def live_processes() -> Callable[[str], list[int]]:
    """PIDs whose command line contains a marker (to prove no sandboxed process survived)."""
    return _live
