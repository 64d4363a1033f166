"""Governance fixtures: the platform admin client, and throw-away migrated databases for tests
that tamper with what the shared test database must keep intact (audit chain, constitution)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from psycopg.conninfo import make_conninfo

from somastack import Client
from somastack.config import Settings
from somastack.store import Database, migrate

TEMPLATE = f"soma_gov_tmpl_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(server: str, admin_key: str) -> Iterator[Client]:
    """A client holding the bootstrap platform admin key."""
    with Client(server, api_key=admin_key) as c:
        yield c


@pytest.fixture(scope="session")
def template_db(database_url: str) -> Iterator[str]:
    """A migrated, empty database to copy fresh ones from."""
    admin_url = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    migrate.migrate(make_conninfo(database_url, dbname=TEMPLATE))
    yield TEMPLATE
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


@pytest.fixture
def fresh_url(database_url: str, template_db: str) -> Iterator[str]:
    """The URL of a new, migrated database (dropped after the test)."""
    name = f"soma_gov_{uuid.uuid4().hex[:12]}"
    admin_url = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield make_conninfo(database_url, dbname=name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def fresh_settings(fresh_url: str, tmp_path: Path) -> Settings:
    """Settings of a separate deployment: its own database and its own SOMA_HOME."""
    return Settings(home=tmp_path / "home", database_url=fresh_url, pool_min=1, pool_max=4)


@pytest_asyncio.fixture
async def fresh_db(fresh_settings: Settings) -> AsyncIterator[Database]:
    db = await Database.open(fresh_settings)
    yield db
    await db.close()


def run_soma(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`soma ARGS` in a subprocess with `env`; never raises on a non-zero exit."""
    return subprocess.run([sys.executable, "-m", "somastack.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def audit_rows(db: psycopg.Connection, **where: str) -> list[tuple[str, ...]]:
    """(action, decision, reasons) of audit rows matching column=value filters, oldest first."""
    clause = " AND ".join(f"{k} = %s" for k in where) or "true"
    return db.execute(f"SELECT action, decision, reasons::text FROM audit_log WHERE {clause} "
                      "ORDER BY seq", tuple(where.values())).fetchall()


AuditRows = Callable[..., list[tuple[str, ...]]]


@pytest.fixture
def fresh_server(fresh_settings: Settings) -> Iterator[str]:
    """A second API server on its own database and home (for tests that change global state)."""
    import threading
    import time

    import uvicorn
    from tests.conftest import free_port

    from somastack.api.app import create_app

    port = free_port()
    fresh_settings.port, fresh_settings.url = port, f"http://127.0.0.1:{port}"
    srv = uvicorn.Server(uvicorn.Config(create_app(fresh_settings), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the fresh server did not start"
        time.sleep(0.05)
    yield fresh_settings.server_url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def fresh_admin(fresh_server: str, fresh_settings: Settings) -> Iterator[Client]:
    with Client(fresh_server, api_key=fresh_settings.admin_key_file.read_text().strip()) as c:
        yield c


def soma_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `soma` subprocess acting on the deployment `settings` describes."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SOMA_")}
    env.update({"SOMA_HOME": str(settings.home_dir), "SOMA_URL": settings.server_url})
    if settings.database_url:
        env["SOMA_DATABASE_URL"] = settings.database_url
    env.update(extra)
    return env
