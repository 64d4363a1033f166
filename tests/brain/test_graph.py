"""Invariants of the graph math used by recall (heat kernel, k-NN graph, z-scores)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from somastack.brain.graph import diffuse, heat_apply, knn_adjacency, znorm

sizes = st.integers(2, 12)


def _adjacency(n: int, data: st.DataObject) -> np.ndarray:
    a = data.draw(arrays(np.float64, (n, n), elements=st.floats(0, 1)))
    return np.maximum(a, a.T) * (1 - np.eye(n))


@settings(max_examples=60, deadline=None)
@given(sizes, st.floats(0.01, 2.0), st.data())
def test_heat_kernel_is_symmetric_psd_and_conserves_mass(n: int, beta: float, data: st.DataObject) -> None:
    k = heat_apply(_adjacency(n, data), beta, np.eye(n))
    np.testing.assert_allclose(k, k.T, atol=1e-9)
    assert np.linalg.eigvalsh(k).min() > -1e-9  # positive (semi)definite
    np.testing.assert_allclose(k.sum(axis=1), 1.0, atol=1e-8)  # L·1 = 0 ⇒ K·1 = 1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 50), st.floats(0.01, 2.0), st.data())
def test_heat_apply_equals_the_kernel_by_eigendecomposition(n: int, beta: float,
                                                            data: st.DataObject) -> None:
    a = _adjacency(n, data)
    w, v = np.linalg.eigh(np.diag(a.sum(axis=1)) - a)
    x = data.draw(arrays(np.float64, n, elements=st.floats(-5, 5)))
    np.testing.assert_allclose(heat_apply(a, beta, x), (v * np.exp(-beta * w)) @ v.T @ x,
                               atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(sizes, st.data())
def test_diffusion_keeps_total_above_floor(n: int, data: st.DataObject) -> None:
    s = data.draw(arrays(np.float64, n, elements=st.floats(-5, 5)))
    out = diffuse(s, _adjacency(n, data), 0.2)
    np.testing.assert_allclose((out - s.min()).sum(), (s - s.min()).sum(), atol=1e-7)
    assert out.min() >= s.min() - 1e-9


def test_diffusion_with_no_edges_changes_nothing() -> None:
    s = np.array([3.0, 1.0, 2.0])
    np.testing.assert_allclose(diffuse(s, np.zeros((3, 3)), 0.5), s)


@given(sizes, st.integers(1, 5), st.data())
def test_knn_adjacency_has_k_nonnegative_entries_off_diagonal(n: int, k: int, data: st.DataObject) -> None:
    sim = data.draw(arrays(np.float64, (n, n), elements=st.floats(-1, 1)))
    a = knn_adjacency(sim, k)
    assert (a >= 0).all() and (np.diag(a) == 0).all()
    assert ((a > 0).sum(axis=1) <= min(k, n - 1)).all()


@given(arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e3, 1e3)))
def test_znorm_is_centred_and_scaled(x: np.ndarray) -> None:
    z = znorm(x)
    assert abs(z.mean()) < 1e-6
    assert abs(z.std() - 1) < 1e-6 or np.allclose(z, 0)
