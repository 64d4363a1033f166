"""`soma bench scale` runs end to end on a small corpus and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_scale_small(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "somastack.cli.main", "bench", "scale", "--memories", "300",
         "--queries", "40", "--concurrency", "4", "--home", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["memories"] == 300 and r["queries"] == 40 and r["ingest_per_s"] > 0
    assert 0 < r["recall_ms"]["p50"] <= r["recall_ms"]["p95"] <= r["recall_ms"]["p99"]
    assert 0 < r["raw_pgvector_ms"]["p50"] <= r["raw_pgvector_ms"]["p95"]
    assert r["qps"] > 0 and r["overhead_ratio"]["p50"] > 0
