"""Graph math for recall: k-NN similarity graphs and heat-kernel diffusion on candidate sets."""

from __future__ import annotations

import math

import numpy as np


def knn_adjacency(sim: np.ndarray, k: int) -> np.ndarray:
    """A_ij = max(sim_ij, 0) for the k most similar j ≠ i of each i (not yet symmetric)."""
    s = sim.astype(np.float64).copy()
    np.fill_diagonal(s, -np.inf)
    n = len(s)
    a = np.zeros_like(s)
    if n < 2:
        return a
    k = min(k, n - 1)
    nearest = np.argpartition(-s, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    a[rows, nearest.ravel()] = np.maximum(s[rows, nearest.ravel()], 0.0)
    return a


def heat_apply(adjacency: np.ndarray, beta: float, x: np.ndarray) -> np.ndarray:
    """K·x for the heat kernel K = exp(−βL), L = D − A of the symmetrised adjacency A.

    K is symmetric positive definite and its rows sum to 1 (L·1 = 0), so K moves mass between
    connected nodes without creating or destroying it. K is never formed: with ‖βL‖∞ =
    2β·max degree = n, K·x = (exp(−βL/m))^m·x for m = ⌈n/4⌉, and each factor is its Taylor
    series Σ_k (−βL/m)^k/k! up to the first k with (n/m)^k/k! ≤ 10⁻¹⁶ (n/m ≤ 4: at most 34
    terms), which bounds what is left out by e⁴·10⁻¹⁶·‖x‖∞; no term exceeds 4⁴/4! ≈ 11·‖x‖∞, so
    cancellation costs less than two digits. Same result as an eigendecomposition to rounding,
    a fifth of the CPU for 50 nodes. x may be a vector or a matrix (K = heat_apply(A, β, I)).
    """
    a = np.maximum(adjacency, adjacency.T)
    degree = a.sum(axis=1)
    norm = 2 * beta * float(degree.max(initial=0.0))
    steps = max(1, math.ceil(norm / 4))
    terms, bound = 0, 1.0
    while bound > 1e-16:
        terms += 1
        bound *= norm / steps / terms
    step = (np.diag(degree) - a) * (-beta / steps)
    out = np.asarray(x, dtype=np.float64)
    for _ in range(steps):
        term = total = out
        for k in range(1, terms + 1):
            term = (step @ term) / k
            total = total + term
        out = total
    return out


def diffuse(scores: np.ndarray, adjacency: np.ndarray, beta: float) -> np.ndarray:
    """min(s) + K·(s − min(s)), K = exp(−βL): smooths scores over the graph, keeping their
    total above the floor."""
    floor = scores.min()
    return floor + heat_apply(adjacency, beta, scores - floor)


def znorm(x: np.ndarray) -> np.ndarray:
    """(x − mean)/std over the candidate set; all zeros when x is constant."""
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x, dtype=np.float64)
