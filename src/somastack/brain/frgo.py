"""FRGO conductance on memory links: paths that carried useful recall flow get cheaper.

Each link has a conductance C (like a vessel that widens with use, Tero et al.'s Physarum
model). After a recall that received feedback, every link touching the returned memories moves

    C ← clip(C + η·(|Q|^α − λ·C), c_min, c_max)

where Q is the flow through the link: the reward when both ends were used, 0 otherwise, so an
unused link decays towards c_min at rate λ. The traversal cost of a link of weight w is

    cost = 1 / (C · w)

positive, and falling as the link proves useful (w > 0 is the writer's link weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Conductance:
    """The knobs of the update rule (from Settings) and the value of a never-used link."""

    eta: float = 0.2
    alpha: float = 1.0
    decay: float = 0.1
    c_min: float = 0.1
    c_max: float = 10.0
    initial: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.c_min <= self.initial <= self.c_max):
            raise ValueError("conductance bounds need 0 < c_min ≤ initial ≤ c_max")
        if self.eta <= 0 or self.alpha <= 0 or self.decay < 0:
            raise ValueError("eta and alpha must be positive, decay non-negative")


def update_conductance(c: np.ndarray, flow: np.ndarray, k: Conductance) -> np.ndarray:
    """clip(C + η(|Q|^α − λC), c_min, c_max), element-wise."""
    step = k.eta * (np.power(np.abs(flow), k.alpha) - k.decay * c)
    return np.asarray(np.clip(c + step, k.c_min, k.c_max))


def link_flow(src_used: np.ndarray, dst_used: np.ndarray, reward: float) -> np.ndarray:
    """Q per link: the reward where both ends were used, 0 elsewhere (negative rewards carry no
    flow; they only let the link decay)."""
    return np.where(src_used & dst_used, max(reward, 0.0), 0.0)


def traversal_cost(c: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """1 / (C · w) for positive w; a non-positive weight makes the link impassable (inf)."""
    w = np.asarray(weight, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(w > 0, 1.0 / (np.asarray(c) * np.maximum(w, 1e-12)), np.inf)
