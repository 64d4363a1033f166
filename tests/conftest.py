"""Shared fixtures: one real embedded PostgreSQL and one real API server per test session.

The server is the real app under uvicorn on a free loopback port, in a thread of the test
process; tests talk to it over HTTP with the real client, and to the database with psycopg.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import uvicorn

from somastack import Client
from somastack.api.app import create_app
from somastack.config import Settings
from somastack.store import resolve_url

ROOT = Path(__file__).resolve().parents[1]
LOCOMO = ROOT.parent / "shared" / "data" / "locomo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def soma_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soma-home")


@pytest.fixture(scope="session")
def settings(soma_home: Path) -> Settings:
    port = free_port()
    return Settings(home=soma_home, port=port, url=f"http://127.0.0.1:{port}", pool_max=8)


@pytest.fixture(scope="session")
def database_url(settings: Settings) -> str:
    url, _ = resolve_url(settings)
    return url


@pytest.fixture(scope="session")
def server(settings: Settings, database_url: str) -> Iterator[str]:
    """The API serving on loopback; yields its base URL."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    yield settings.server_url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test, so tests never see each other's data."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def admin_key(server: str, settings: Settings) -> str:
    """The platform admin key the server's first start created (and saved under SOMA_HOME)."""
    return settings.admin_key_file.read_text().strip()


@pytest.fixture(scope="session")
def tenant_key(server: str, admin_key: str) -> Callable[[str], str | None]:
    """tenant → an `admin`-scoped key of it, creating the tenant on first use (None if invalid)."""
    made: dict[str, str | None] = {}

    def key_for(tenant: str) -> str | None:
        if tenant not in made:
            with Client(server, api_key=admin_key) as admin:
                resp = admin.http.post("/v1/tenants", json={"id": tenant})
                if resp.status_code not in (201, 409):
                    made[tenant] = None  # not a valid tenant id: its client has no credential
                    return None
                made[tenant] = admin.request("POST", f"/v1/tenants/{tenant}/keys",
                                             json={"name": "tests", "scopes": ["admin"]})["key"]
        return made[tenant]

    return key_for


@pytest.fixture
def make_client(server: str, tenant_key: Callable[[str], str | None]
                ) -> Iterator[Callable[[str | None], Client]]:
    """tenant → a client holding an admin key of that (new) tenant; None → no credential."""
    made: list[Client] = []

    def make(tenant: str | None) -> Client:
        key = tenant_key(tenant) if tenant else None
        c = Client(server, tenant=tenant if key else None, api_key=key)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(make_client: Callable[[str | None], Client], tenant: str) -> Client:
    return make_client(tenant)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct, owner-rights connection for checking what the database really holds."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def cli_env(server: str, tenant: str, tenant_key: Callable[[str], str | None]) -> dict[str, str]:
    """Environment for running `soma` as a subprocess against the test server as `tenant`."""
    import os

    return {**os.environ, "SOMA_URL": server, "SOMA_TENANT": tenant,
            "SOMA_API_KEY": tenant_key(tenant) or ""}


def tenant_rows(db: psycopg.Connection, tenant: str) -> int:
    """How many memories the database holds for a tenant (expired ones included)."""
    row = db.execute("SELECT count(*) FROM memories WHERE tenant_id = %s", (tenant,)).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def settings_env(settings: Settings, server: str) -> dict[str, str]:
    """Environment for a `soma` subprocess sharing the test session's embedded database."""
    import os

    return {**os.environ, "SOMA_HOME": str(settings.home_dir), "SOMA_URL": server}
