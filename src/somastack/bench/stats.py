"""Small statistics for benchmark output."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

PROBE_ITERATIONS = 10_000_000


def percentiles_ms(seconds: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """{'p50': …, 'p95': …, 'mean': …} in milliseconds, rounded to 0.01 ms."""
    if not seconds:
        return {}
    a = np.asarray(seconds) * 1000
    out = {f"p{p}": round(float(np.percentile(a, p)), 2) for p in points}
    out["mean"] = round(float(a.mean()), 2)
    return out


def python_loop_ms() -> float:
    """Wall time of a fixed pure-Python loop (10 million `s += i * i % 7`): a probe of how fast
    this host runs the interpreter right now. Hosts of one kind drift (0.4-3 s have been seen on
    this project's 2-core machines), and every figure of a run moves with it."""
    start = time.perf_counter()
    s = 0
    for i in range(PROBE_ITERATIONS):
        s += i * i % 7
    return round((time.perf_counter() - start) * 1000, 1)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (else what the platform module knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What a run's figures depend on: cores, CPU model and the interpreter speed probe."""
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "python_loop_ms": python_loop_ms()}
