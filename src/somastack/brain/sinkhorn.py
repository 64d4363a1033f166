"""Sinkhorn scaling: entropic optimal transport between two distributions over memories.

For marginals a (n), b (m) and costs M (n × m), the entropic plan is

    P = diag(u) · K · diag(v),   K = exp(−M/ε)

with u, v found by alternating u ← a / (K v), v ← b / (Kᵀ u) until the marginals P1 = a and
Pᵀ1 = b hold within `tol` (L1), or `max_iter` is reached. We iterate in the log domain
(log u, log v with log-sum-exp), so a small ε does not underflow. With a = b = 1 and M = −log A,
the same iteration is the Sinkhorn–Knopp scaling of a positive matrix A to a doubly-stochastic one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp


@dataclass
class TransportPlan:
    plan: np.ndarray  # (n, m), non-negative
    iterations: int
    error: float  # L1 distance of the row and column sums to their marginals
    converged: bool


def _check_marginal(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or (x < 0).any() or not np.isfinite(x).all():
        raise ValueError(f"{name} must be a non-empty vector of non-negative numbers")
    return x


def sinkhorn(a: np.ndarray, b: np.ndarray, cost: np.ndarray, *, epsilon: float = 0.05,
             tol: float = 1e-6, max_iter: int = 1000) -> TransportPlan:
    """The entropic OT plan between a and b (equal total mass) for `cost`; see the module doc."""
    a, b = _check_marginal(a, "a"), _check_marginal(b, "b")
    if abs(a.sum() - b.sum()) > 1e-9 * max(a.sum(), 1.0):
        raise ValueError("a and b must have the same total mass")
    if cost.shape != (a.size, b.size):
        raise ValueError(f"cost must be {a.size}×{b.size}, got {cost.shape}")
    if epsilon <= 0:
        raise ValueError("epsilon must be positive")
    log_k = -np.asarray(cost, dtype=np.float64) / epsilon
    with np.errstate(divide="ignore"):
        log_a, log_b = np.log(a), np.log(b)
    log_u, log_v = np.zeros(a.size), np.zeros(b.size)
    error, it = np.inf, 0
    for it in range(1, max_iter + 1):
        log_u = log_a - logsumexp(log_k + log_v[None, :], axis=1)
        log_v = log_b - logsumexp(log_k + log_u[:, None], axis=0)
        if it % 10 == 0 or it == max_iter:
            rows = np.exp(logsumexp(log_k + log_u[:, None] + log_v[None, :], axis=1))
            error = float(np.abs(rows - a).sum())  # columns match exactly after the v step
            if error <= tol:
                break
    plan = np.exp(log_k + log_u[:, None] + log_v[None, :])
    error = float(np.abs(plan.sum(axis=1) - a).sum() + np.abs(plan.sum(axis=0) - b).sum())
    return TransportPlan(plan, it, error, error <= tol)


def doubly_stochastic(matrix: np.ndarray, *, tol: float = 1e-6, max_iter: int = 1000) -> TransportPlan:
    """Sinkhorn–Knopp: diag(u)·A·diag(v) with unit row and column sums, for a positive square A."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or (m <= 0).any():
        raise ValueError("matrix must be square with positive entries")
    ones = np.ones(m.shape[0])
    return sinkhorn(ones, ones, -np.log(m), epsilon=1.0, tol=tol, max_iter=max_iter)


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """exp(s/τ) / Σ exp(s/τ): a distribution that sharpens as τ → 0."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    return np.asarray(np.exp(z - logsumexp(z)))
