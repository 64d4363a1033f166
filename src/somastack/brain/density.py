"""Density-matrix confidence: what the tenant has recently confirmed, as a quantum-style state.

ρ is an exponential moving average of the outer products of recently recalled-and-used memory
vectors, kept a density matrix (symmetric, positive semi-definite, trace 1):

    ρ ← Π((1 − α)·ρ + α · (1/n) Σ_i f̂_i f̂_iᵀ)

where Π symmetrises, clips negative eigenvalues to 0 and renormalises the trace to 1. The
confidence of memory k for query q is the ρ-weighted overlap, calibrated by the largest
eigenvalue (for unit vectors |q̂ᵀρf̂| ≤ λ_max):

    c_k = clip(q̂ᵀ ρ f̂_k / λ_max(ρ), 0, 1)

so c_k = 1 when query and memory both lie on the dominant confirmed direction, and → 0 when
either is orthogonal to everything confirmed so far.
"""

from __future__ import annotations

import numpy as np


def maximally_mixed(dims: int) -> np.ndarray:
    """I/d: the state that knows nothing (trace 1, every direction equally likely)."""
    return np.eye(dims) / dims


def project_density(m: np.ndarray) -> np.ndarray:
    """The nearest density matrix: (M + Mᵀ)/2, negative eigenvalues → 0, trace → 1.

    A matrix with no positive eigenvalue carries no information and becomes I/d.
    """
    sym = (m + m.T) / 2
    values, vectors = np.linalg.eigh(sym)
    values = np.clip(values, 0.0, None)
    total = values.sum()
    if not np.isfinite(total) or total <= 1e-12:
        return maximally_mixed(m.shape[0])
    values = values / total
    return np.asarray((vectors * values) @ vectors.T)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def update_density(rho: np.ndarray, vectors: np.ndarray, rate: float) -> np.ndarray:
    """Π((1 − α)ρ + α·mean_i f̂_i f̂_iᵀ) with α = rate ∈ (0, 1]; no vectors → ρ unchanged."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    f = _unit_rows(vectors)
    if f.shape[0] == 0:
        return rho
    observed = f.T @ f / f.shape[0]
    return project_density((1 - rate) * rho + rate * observed)


def density_confidence(rho: np.ndarray, query: np.ndarray, memories: np.ndarray) -> np.ndarray:
    """clip(q̂ᵀρf̂_k / λ_max(ρ), 0, 1) for each row f_k of `memories`."""
    q = _unit_rows(query)[0]
    f = _unit_rows(memories)
    lam_max = float(np.linalg.eigvalsh((rho + rho.T) / 2)[-1])
    if lam_max <= 1e-12:
        return np.zeros(f.shape[0])
    raw = f @ (rho @ q)
    return np.asarray(np.clip(raw / lam_max, 0.0, 1.0))


def to_bytes(rho: np.ndarray) -> bytes:
    """ρ as little-endian float32 bytes, row-major (d² · 4 bytes)."""
    return np.ascontiguousarray(rho, dtype="<f4").tobytes()


def from_bytes(raw: bytes, dims: int) -> np.ndarray:
    """The inverse of `to_bytes`, re-projected (float32 rounding can nudge the trace)."""
    m = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if m.size != dims * dims:
        raise ValueError(f"stored density matrix has {m.size} values, expected {dims * dims}")
    return project_density(m.reshape(dims, dims))
