"""Restarts keep every memory; SIGKILL during an import loses no acknowledged write; import resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg

from somastack.bench import corpus
from somastack.bench.server import served
from somastack.store import embedded

N = 1500


def _count(home: Path, tenant: str) -> set[str]:
    with psycopg.connect(embedded.start(home)) as conn:
        rows = conn.execute("SELECT content FROM memories WHERE tenant_id = %s", (tenant,)).fetchall()
    return {r[0] for r in rows}


def _import(url: str, home: Path, file: Path) -> subprocess.Popen[str]:
    # the fresh home's bootstrap admin key (home/admin.key) acts for its tenant, "default"
    env = {**os.environ, "SOMA_URL": url, "SOMA_HOME": str(home)}
    env.pop("SOMA_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "somastack.cli.main", "import", str(file),
                             "--namespace", "dur", "--batch-size", "50"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_during_import_loses_nothing_acknowledged(tmp_path: Path) -> None:
    home, tenant = tmp_path / "home", "default"
    home.mkdir()
    texts = corpus.sentences(N, seed=99)
    file = tmp_path / "memories.jsonl"
    file.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    progress = tmp_path / "memories.jsonl.soma-import.json"

    with served(home) as srv:
        importer = _import(srv.url, home, file)
        deadline = time.monotonic() + 120
        while not (progress.exists() and json.loads(progress.read_text())["lines"] >= 300):
            assert importer.poll() is None, importer.stderr.read() if importer.stderr else ""
            assert time.monotonic() < deadline, "import made no progress"
            time.sleep(0.05)
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait()
        _, err = importer.communicate(timeout=60)
        assert importer.returncode != 0 and "cannot reach the server" in err

    acknowledged = json.loads(progress.read_text())["lines"]
    assert 300 <= acknowledged < N
    with served(home) as srv:
        stored = _count(home, tenant)
        assert set(texts[:acknowledged]) <= stored  # every acknowledged batch survived
        importer = _import(srv.url, home, file)
        _, err = importer.communicate(timeout=300)
        assert importer.returncode == 0, err
        assert not progress.exists()
    with served(home):  # and a clean restart keeps everything, exactly once
        assert _count(home, tenant) == set(texts)
        with psycopg.connect(embedded.start(home)) as conn:
            n = conn.execute("SELECT count(*) FROM memories WHERE tenant_id = %s", (tenant,)).fetchone()
        assert n == (N,)


def _postgres_running(pgdata: Path) -> bool:
    return any(str(pgdata) in " ".join(p.info["cmdline"] or [])
               for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "postgres")


def test_sigterm_stops_the_embedded_database(tmp_path: Path) -> None:
    with served(tmp_path):
        assert _postgres_running(tmp_path / "pgdata")
    deadline = time.monotonic() + 10
    while _postgres_running(tmp_path / "pgdata"):
        assert time.monotonic() < deadline, "soma serve exited but left its PostgreSQL running"
        time.sleep(0.1)
