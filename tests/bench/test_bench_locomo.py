"""`soma bench locomo` on one conversation: loads, asks, scores, and beats plain vector search."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import LOCOMO

from somastack.bench.locomo_data import load, load_dir, parse_when

needs_data = pytest.mark.skipif(
    not (LOCOMO / "conv-26.json").exists(),
    reason=f"LoCoMo data not found at {LOCOMO} (it ships in ../shared/data/locomo beside the repo)",
)


def test_dates_and_bad_directories() -> None:
    assert parse_when("1:56 pm on 8 May, 2023").isoformat() == "2023-05-08T13:56:00+00:00"
    assert parse_when("someday") is None
    with pytest.raises(ValueError, match="not a directory"):
        load_dir(Path("/nonexistent"))


@needs_data
def test_loader_reads_turns_and_scored_questions() -> None:
    conv = load(LOCOMO / "conv-26.json")
    assert len(conv.turns) > 300 and conv.turns[0].dia_id == "D1:1"
    assert conv.turns[0].content.startswith(f"{conv.turns[0].speaker}: ")
    assert {q.category for q in conv.questions} <= {1, 2, 3, 4}
    ids = {t.dia_id for t in conv.turns}
    assert all(set(q.evidence) <= ids for q in conv.questions)


@needs_data
def test_bench_on_one_conversation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(LOCOMO / "conv-26.json", data)
    out = subprocess.run(
        [sys.executable, "-m", "somastack.cli.main", "bench", "locomo", "--data", str(data),
         "--baselines", "--ablate", "diffusion", "--home", str(tmp_path / "home"), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["conversations"] == 1 and r["n_questions"] > 100
    ours, dense = r["recall_at"]["overall"], r["baselines"]["dense"]
    assert 0 <= ours["1"] <= ours["5"] <= ours["10"] <= ours["20"] <= 1
    assert ours["10"] > dense["10"] + 0.1  # far better than plain vector search
    assert set(r["recall_at"]["by_category"]) <= {"1", "2", "3", "4"}
    assert "diffusion" in r["ablations"] and r["recall_ms"]["p95"] > 0


def test_missing_data_is_reported_clearly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "somastack.cli.main", "bench", "locomo",
                          "--data", str(tmp_path / "nowhere"), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not a directory" in out.stderr
