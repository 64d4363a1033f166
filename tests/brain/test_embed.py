"""The local embedder: unit vectors, stable output, meaningful similarity."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from somastack.brain.embed import MiniLMEmbedder, l2_normalise, mean_pool

EMB = MiniLMEmbedder()


def test_vectors_are_unit_norm_and_deterministic() -> None:
    texts = ["The cat sat on the mat.", "A feline rested on a rug.", "Stock markets fell today.", ""]
    a, b = EMB.embed(texts), EMB.embed(list(reversed(texts)))[::-1]
    assert a.shape == (4, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batch order and padding do not matter
    sim = a[:3] @ a[:3].T
    assert sim[0, 1] > 0.4 > sim[0, 2]


def test_long_text_is_truncated_not_refused() -> None:
    v = EMB.embed(["word " * 5000])
    assert v.shape == (1, 384) and abs(float(np.linalg.norm(v)) - 1) < 1e-5


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 16)),
              elements=st.floats(-1e3, 1e3)))
def test_l2_normalise_gives_unit_rows_or_zero(x: np.ndarray) -> None:
    y = l2_normalise(x)
    norms = np.linalg.norm(y, axis=1)
    for n, row in zip(norms, x, strict=True):
        assert abs(n - 1) < 1e-4 or np.linalg.norm(row) < 1e-6


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_mean_pool_ignores_padding(batch: int, seq: int, data: st.DataObject) -> None:
    hidden = data.draw(arrays(np.float32, (batch, seq, 3), elements=st.floats(-10, 10, width=32)))
    lengths = data.draw(st.lists(st.integers(1, seq), min_size=batch, max_size=batch))
    mask = np.array([[1] * n + [0] * (seq - n) for n in lengths])
    pooled = mean_pool(hidden, mask)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(pooled[i], hidden[i, :n].mean(axis=0), rtol=1e-4, atol=1e-4)
