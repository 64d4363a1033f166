"""`soma bench scale` runs end to end on a small corpus and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from somastack.bench import corpus, scale
from somastack.store import embedded


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "somastack.cli.main", "bench", "scale", *args],
                          capture_output=True, text=True, timeout=300)


def test_bench_scale_small(tmp_path: Path) -> None:
    out = _bench("--memories", "300", "--queries", "40", "--concurrency", "4",
                 "--home", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["memories"] == 300 and r["queries"] == 40 and r["ingest_per_s"] > 0
    assert r["reused"] is False
    m = r["machine"]  # what the figures depend on: cores, CPU and the interpreter's speed now
    assert m["cpus"] >= 1 and m["cpu"] and 0 < m["python_loop_ms"] < 60_000
    assert 0 < r["recall_ms"]["p50"] <= r["recall_ms"]["p95"] <= r["recall_ms"]["p99"]
    assert 0 < r["raw_pgvector_ms"]["p50"] <= r["raw_pgvector_ms"]["p95"]
    assert r["qps"] > 0 and r["overhead_ratio"]["p50"] > 0
    q = r["quality"]
    assert 0 < q["precision_at_10"] <= q["hit_at_10"] <= 1  # recall finds what is asked for
    assert r["settle_s"] >= 0  # recall was measured after the ingest was vacuumed and analysed
    with psycopg.connect(embedded.start(tmp_path)) as conn:
        row = conn.execute("SELECT last_vacuum, last_analyze FROM pg_stat_user_tables "
                           "WHERE relname = 'memories'").fetchone()
    assert row is not None and None not in row

    # Recall again on the kept memories, without ingesting: --memories is what is there.
    again = _bench("--memories", "5", "--queries", "30", "--home", str(tmp_path), "--reuse", "--json")
    assert again.returncode == 0, again.stderr
    r2 = json.loads(again.stdout)
    assert r2["reused"] is True and r2["memories"] == 300 and r2["queries"] == 30
    assert r2["ingest_s"] is None and r2["ingest_per_s"] is None
    assert 0 < r2["recall_ms"]["p50"] <= r2["recall_ms"]["p95"] and 0 < r2["quality"]["hit_at_10"]
    assert scale.stored(tmp_path) == 300  # nothing was written
    # Ingesting on top of them would measure a different corpus than the one reported.
    twice = _bench("--memories", "300", "--queries", "5", "--home", str(tmp_path), "--json")
    assert twice.returncode == 2, twice.stderr
    assert "already holds 300 bench memories" in " ".join(twice.stderr.split())
    assert scale.stored(tmp_path) == 300


def test_bench_scale_reuse_needs_a_home_with_memories(tmp_path: Path) -> None:
    for args in ([], ["--home", str(tmp_path)]):
        out = _bench("--reuse", "--json", *args)
        assert out.returncode == 2 and "--reuse needs a --home" in " ".join(out.stderr.split())
        assert not out.stdout


def test_every_question_says_what_answers_it() -> None:
    qs = corpus.queries(2000)
    assert all(corpus.needles(q) for q in qs)
    assert corpus.needles("What did Ada Berg do last weekend?") == ["Ada Berg", "last weekend"]
    assert corpus.relevant("Who went hiking in Kyoto?", "Zoe Ito went hiking in Kyoto yesterday.")
    assert not corpus.relevant("Who went hiking in Kyoto?", "Zoe Ito went hiking in Berlin.")
    with pytest.raises(ValueError):
        corpus.needles("What is the meaning of life?")
