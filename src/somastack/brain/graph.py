"""Graph math for recall: k-NN similarity graphs and heat-kernel diffusion on candidate sets."""

from __future__ import annotations

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


def heat_kernel(adjacency: np.ndarray, beta: float) -> np.ndarray:
    """K = exp(−βL) with L = D − A for the symmetrised adjacency A.

    K is symmetric positive definite and its rows sum to 1 (L·1 = 0), so K moves score mass
    between connected candidates without creating or destroying it.
    """
    a = np.maximum(adjacency, adjacency.T)
    lap = np.diag(a.sum(axis=1)) - a
    w, v = np.linalg.eigh(lap)
    return (v * np.exp(-beta * w)) @ v.T


def diffuse(scores: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """min(s) + K·(s − min(s)): smooths scores over the graph, keeping their total above the floor."""
    floor = scores.min()
    return floor + kernel @ (scores - floor)


def znorm(x: np.ndarray) -> np.ndarray:
    """(x − mean)/std over the candidate set; all zeros when x is constant."""
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x, dtype=np.float64)
