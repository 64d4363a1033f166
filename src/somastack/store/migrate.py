"""Ordered, idempotent SQL migrations applied at start and by `soma db migrate`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg

_LOCK_ID = 0x50A5_7AC0  # advisory lock: one migrator at a time across processes

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    text PRIMARY KEY,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """Every migration shipped in the package, in version order."""
    folder = resources.files("somastack.store") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def applied(conn: psycopg.Connection) -> dict[str, str]:
    """version → applied_at (ISO) of the migrations recorded in this database."""
    conn.execute(_LEDGER)
    rows = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version")
    return {v: at.isoformat() for v, at in rows.fetchall()}


def migrate(url: str) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the versions applied."""
    done: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            have = applied(conn)
            for m in available():
                if m.version in have:
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (m.version, m.checksum),
                    )
                done.append(m.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return done


def pending(url: str) -> list[str]:
    """Versions shipped but not yet applied."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = applied(conn)
    return [m.version for m in available() if m.version not in have]
