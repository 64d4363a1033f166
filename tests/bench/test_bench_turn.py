"""`soma bench turn` runs end to end (real model, real server) and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_turn_small(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "somastack.cli.main", "bench", "turn", "--turns", "2",
         "--home", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for shape in ("client_tools", "model_plan"):
        s = r[shape]
        assert s["turns"] == 2 and s["step_errors"] == 0 and s["events_per_turn"] >= 8
        assert 0 < s["overhead_ms"]["p50"] <= s["overhead_ms"]["p95"]
        assert s["overhead_ms"]["p50"] < s["wall_ms"]["p50"]  # the model's time is not overhead
        assert set(s["stage_overhead_ms"]) >= {"recall", "tools", "answer", "remember"}
    assert r["replayed_events"] > 0 and r["events_per_s"] > 0
    assert r["target"]["overhead_p95_ms"] == 25.0 and isinstance(r["target"]["met"], bool)
