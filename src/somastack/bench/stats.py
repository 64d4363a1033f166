"""Small statistics for benchmark output."""

from __future__ import annotations

import numpy as np


def percentiles_ms(seconds: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """{'p50': …, 'p95': …, 'mean': …} in milliseconds, rounded to 0.01 ms."""
    if not seconds:
        return {}
    a = np.asarray(seconds) * 1000
    out = {f"p{p}": round(float(np.percentile(a, p)), 2) for p in points}
    out["mean"] = round(float(a.mean()), 2)
    return out
