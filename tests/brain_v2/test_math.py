"""Invariants of the brain v2 math: density matrix, HRR, FRGO conductance, Sinkhorn, θ steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from somastack.brain import density, frgo, hrr, sinkhorn, weights

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
positive = st.floats(0.05, 5, allow_nan=False, allow_infinity=False)


def _is_density(rho: np.ndarray) -> None:
    assert np.allclose(rho, rho.T, atol=1e-10)
    assert np.linalg.eigvalsh(rho).min() >= -1e-10
    assert abs(np.trace(rho) - 1) < 1e-9


@given(arrays(np.float64, (6, 6), elements=finite))
def test_projection_gives_a_density_matrix(m: np.ndarray) -> None:
    _is_density(density.project_density(m))


@given(arrays(np.float64, (3, 8), elements=finite), st.floats(0.01, 1.0), st.integers(1, 5))
def test_ema_updates_stay_psd_with_trace_one(vectors: np.ndarray, rate: float, steps: int) -> None:
    rho = density.maximally_mixed(8)
    for _ in range(steps):
        rho = density.update_density(rho, vectors, rate)
        _is_density(rho)


@given(arrays(np.float64, (4, 8), elements=finite), arrays(np.float64, 8, elements=finite),
       arrays(np.float64, (5, 8), elements=finite))
def test_confidence_is_in_unit_interval(seen: np.ndarray, q: np.ndarray, f: np.ndarray) -> None:
    rho = density.update_density(density.maximally_mixed(8), seen, 0.5)
    c = density.density_confidence(rho, q, f)
    assert c.shape == (5,) and ((c >= 0) & (c <= 1)).all()


def test_confidence_is_one_on_the_confirmed_direction_and_zero_orthogonal() -> None:
    v, w = np.eye(16)[0], np.eye(16)[1]
    rho = density.update_density(density.maximally_mixed(16), v[None, :], 1.0)
    assert density.density_confidence(rho, v, np.stack([v, w])) == pytest.approx([1.0, 0.0])
    assert density.from_bytes(density.to_bytes(rho), 16) == pytest.approx(rho, abs=1e-6)


@given(st.integers(8, 256), st.integers(0, 2**31))
def test_unitary_roles_have_unit_spectrum_and_exact_inverse(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    r, x = hrr.unitary_vector(dims, rng), hrr.random_vector(dims, rng)
    assert np.allclose(np.abs(np.fft.rfft(r)), 1.0)
    assert np.linalg.norm(r) == pytest.approx(1.0)
    assert np.linalg.norm(hrr.bind(r, x)) == pytest.approx(np.linalg.norm(x))
    assert np.allclose(hrr.unbind(hrr.bind(r, x), r, eps=0.0), x, atol=1e-9)


@given(st.integers(0, 2**31))
def test_bind_commutes_and_wiener_unbinding_is_stable(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = hrr.random_vector(256, rng), hrr.random_vector(256, rng)
    assert np.allclose(hrr.bind(a, b), hrr.bind(b, a))
    back = hrr.unbind(hrr.bind(a, b), a)
    assert np.isfinite(back).all()
    cos = back @ b / (np.linalg.norm(back) * np.linalg.norm(b))
    assert cos > 0.5  # a random (non-unitary) role: regularised unbinding still points at b


def test_trace_holds_a_few_pairs_exactly_and_capacity_grows_with_dims() -> None:
    assert hrr.cleanup_accuracy(384, 5, vocabulary=200, trials=2, rng=np.random.default_rng(1)) == 1.0
    small = hrr.capacity(128, vocabulary=200, trials=2)
    large = hrr.capacity(512, vocabulary=200, trials=2)
    assert 1 <= small < large


rule = frgo.Conductance(eta=0.3, alpha=0.7, decay=0.2, c_min=0.1, c_max=5.0, initial=1.0)


@given(arrays(np.float64, 10, elements=st.floats(0.1, 5.0)), arrays(np.float64, 10, elements=finite))
def test_conductance_stays_within_bounds(c: np.ndarray, q: np.ndarray) -> None:
    for _ in range(3):
        c = frgo.update_conductance(c, q, rule)
        assert ((c >= rule.c_min) & (c <= rule.c_max)).all()


def test_used_links_get_cheaper_and_unused_decay() -> None:
    c = np.full(2, rule.initial)
    flow = frgo.link_flow(np.array([True, True]), np.array([True, False]), reward=1.0)
    for _ in range(5):
        c = frgo.update_conductance(c, flow, rule)
    cost = frgo.traversal_cost(c, np.ones(2))
    assert c[0] > rule.initial > c[1] and cost[0] < 1.0 < cost[1]
    assert frgo.traversal_cost(np.ones(1), np.zeros(1))[0] == np.inf


@settings(deadline=None, max_examples=60)
@given(arrays(np.float64, 5, elements=st.floats(0.01, 1)), arrays(np.float64, 7, elements=st.floats(0.01, 1)),
       arrays(np.float64, (5, 7), elements=st.floats(0, 1)), st.floats(0.1, 1.0))
def test_sinkhorn_matches_both_marginals(a: np.ndarray, b: np.ndarray, cost: np.ndarray, eps: float) -> None:
    a, b = a / a.sum(), b / b.sum()
    t = sinkhorn.sinkhorn(a, b, cost, epsilon=eps, tol=1e-6, max_iter=5000)
    assert t.converged and (t.plan >= 0).all() and t.error <= 1e-6
    assert np.abs(t.plan.sum(axis=1) - a).sum() + np.abs(t.plan.sum(axis=0) - b).sum() <= 1e-6


@settings(deadline=None, max_examples=60)
@given(arrays(np.float64, (6, 6), elements=st.floats(0.05, 20)))
def test_sinkhorn_knopp_is_doubly_stochastic(m: np.ndarray) -> None:
    t = sinkhorn.doubly_stochastic(m, tol=1e-9, max_iter=20000)
    assert np.allclose(t.plan.sum(axis=0), 1, atol=1e-6) and np.allclose(t.plan.sum(axis=1), 1, atol=1e-6)


def test_sinkhorn_refuses_unequal_mass() -> None:
    with pytest.raises(ValueError, match="mass"):
        sinkhorn.sinkhorn(np.ones(2), np.ones(3), np.zeros((2, 3)))


bounds_st = st.dictionaries(st.sampled_from(["dense", "lexical", "recency", "x"]),
                            st.tuples(st.floats(0, 2), st.floats(0, 2)).map(lambda t: (min(t), max(t))),
                            min_size=1)


@given(bounds_st, st.data())
def test_theta_never_leaves_its_bounds(bounds: dict[str, tuple[float, float]], data: st.DataObject) -> None:
    names = list(bounds)
    n = data.draw(st.integers(1, 12))
    x = data.draw(arrays(np.float64, (n, len(names)), elements=st.floats(-5, 5)))
    used = data.draw(arrays(np.bool_, n))
    theta = weights.project({k: data.draw(finite) for k in names}, bounds)
    for _ in range(data.draw(st.integers(1, 5))):
        theta = weights.step(theta, x, used, data.draw(st.floats(-1, 1)),
                             rate=data.draw(positive), temperature=data.draw(positive), bounds=bounds)
        assert all(bounds[k][0] <= theta[k] <= bounds[k][1] for k in names)


def test_gradient_points_to_the_feature_of_the_used_items() -> None:
    x = np.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    g = weights.gradient(x, np.array([True, False, False]), np.zeros(2), 1.0)
    assert g[0] == 0 and g[1] > 0
    assert (weights.gradient(x, np.zeros(3, dtype=bool), np.zeros(2), 1.0) == 0).all()
