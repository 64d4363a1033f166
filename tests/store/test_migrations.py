"""Migrations are ordered, recorded and idempotent; `soma db` reports them."""

from __future__ import annotations

import json
import subprocess
import sys

from somastack.store import migrate


def test_migrations_are_idempotent_and_recorded(database_url: str, server: str) -> None:
    assert migrate.migrate(database_url) == []  # the server already applied everything
    assert migrate.pending(database_url) == []
    versions = [m.version for m in migrate.available()]
    assert versions == sorted(versions) and versions[0].startswith("0001")


def test_db_status_reports_versions(settings_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "somastack.cli.main", "db", "status", "--json"],
                         env=settings_env, capture_output=True, text=True, timeout=120, check=True)
    info = json.loads(out.stdout)
    assert info["postgresql"].startswith("18") and info["pgvector"]
    assert info["pending"] == [] and set(info["applied"]) == {m.version for m in migrate.available()}
    assert info["server"].startswith("embedded")
