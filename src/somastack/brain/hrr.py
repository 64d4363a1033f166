"""Holographic reduced representations (Plate 1995): role–filler binding in a fixed-size vector.

    bind:    c = a ⊛ b = F⁻¹(F(a) · F(b))                       (circular convolution)
    unbind:  b̃ = F⁻¹(F(c) · conj(F(a)) / (|F(a)|² + ε))         (Wiener/Tikhonov-regularised)
    trace:   t = Σ_i r_i ⊛ f_i                                  (superposition of bound pairs)

A unitary role (|F(r)_k| = 1 for every frequency) has an exact inverse, its involution, so
unbinding it adds no noise of its own; what remains is the crosstalk of the other pairs in the
trace, which the cleanup memory removes by snapping the noisy filler to the nearest known item.
Crosstalk grows with the number of pairs, so a trace of D dims holds a bounded number of items;
`capacity` measures it. Random vectors have i.i.d. N(0, 1/D) entries, so ‖v‖ ≈ 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

WIENER_EPS = 1e-3


def random_vector(dims: int, rng: np.random.Generator) -> np.ndarray:
    """A random HRR item: i.i.d. N(0, 1/D) entries (expected norm 1)."""
    return rng.normal(0.0, 1.0 / np.sqrt(dims), dims)


def unitary_vector(dims: int, rng: np.random.Generator) -> np.ndarray:
    """A random unitary role: every Fourier coefficient has modulus 1 (norm exactly 1)."""
    spectrum = np.fft.rfft(rng.normal(size=dims))
    spectrum = spectrum / np.maximum(np.abs(spectrum), 1e-12)
    spectrum[0] = 1.0  # DC and (even D) Nyquist terms must stay real: ±1
    if dims % 2 == 0:
        spectrum[-1] = 1.0 if spectrum[-1].real >= 0 else -1.0
    return np.fft.irfft(spectrum, n=dims)


def bind(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a ⊛ b, circular convolution through the FFT (O(D log D)); commutative, norm-preserving for
    a unitary a."""
    n = a.shape[-1]
    return np.fft.irfft(np.fft.rfft(a) * np.fft.rfft(b), n=n)


def unbind(trace: np.ndarray, role: np.ndarray, eps: float = WIENER_EPS) -> np.ndarray:
    """F⁻¹(F(t)·conj(F(r)) / (|F(r)|² + ε)): the filler bound to `role`, plus crosstalk.

    ε > 0 keeps near-zero frequencies of a non-unitary role from blowing up the noise.
    """
    n = trace.shape[-1]
    r = np.fft.rfft(role)
    return np.fft.irfft(np.fft.rfft(trace) * np.conj(r) / (np.abs(r) ** 2 + eps), n=n)


@dataclass
class CleanupMemory:
    """The known items; `cleanup` returns the nearest one by cosine (its index and similarity)."""

    items: np.ndarray  # (n, D)
    _unit: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._unit = self.items / np.maximum(np.linalg.norm(self.items, axis=1, keepdims=True), 1e-12)

    def cleanup(self, noisy: np.ndarray) -> tuple[int, float]:
        sims = self._unit @ (noisy / max(float(np.linalg.norm(noisy)), 1e-12))
        best = int(np.argmax(sims))
        return best, float(sims[best])


@dataclass
class WorkingTrace:
    """A fixed-size working-memory trace: Σ role_i ⊛ filler_i, whatever the number of pairs."""

    dims: int
    vector: np.ndarray = field(init=False)
    pairs: int = 0

    def __post_init__(self) -> None:
        self.vector = np.zeros(self.dims)

    def add(self, role: np.ndarray, filler: np.ndarray) -> None:
        self.vector = self.vector + bind(role, filler)
        self.pairs += 1

    def recall(self, role: np.ndarray, memory: CleanupMemory) -> tuple[int, float]:
        """The known item bound to `role` (after cleanup) and its similarity."""
        return memory.cleanup(unbind(self.vector, role))


def cleanup_accuracy(dims: int, pairs: int, *, vocabulary: int, trials: int,
                     rng: np.random.Generator) -> float:
    """Share of roles whose filler comes back exactly, for traces of `pairs` random pairs."""
    hits = 0
    for _ in range(trials):
        items = np.stack([random_vector(dims, rng) for _ in range(vocabulary)])
        memory = CleanupMemory(items)
        roles = [unitary_vector(dims, rng) for _ in range(pairs)]
        fillers = rng.choice(vocabulary, size=pairs, replace=True)
        trace = WorkingTrace(dims)
        for role, k in zip(roles, fillers, strict=True):
            trace.add(role, items[k])
        hits += sum(trace.recall(role, memory)[0] == k for role, k in zip(roles, fillers, strict=True))
    return hits / (trials * pairs)


def capacity(dims: int, *, threshold: float = 0.9, vocabulary: int = 1000, trials: int = 3,
             seed: int = 0, step: int = 2) -> int:
    """The most pairs one trace of `dims` holds with cleanup accuracy ≥ threshold.

    Pairs grow geometrically until accuracy drops, then a binary search on the bracket; the
    accuracy is averaged over `trials` traces with a cleanup memory of `vocabulary` items.
    """
    rng = np.random.default_rng(seed)

    def ok(n: int) -> bool:
        return cleanup_accuracy(dims, n, vocabulary=vocabulary, trials=trials, rng=rng) >= threshold

    lo, hi = 0, 1
    while ok(hi):
        lo, hi = hi, hi * step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


if __name__ == "__main__":  # python -m somastack.brain.hrr: the capacity table for the docs
    print(json.dumps({str(d): capacity(d) for d in (384, 1024, 2048)}))
