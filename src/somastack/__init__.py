"""SomaStack: long-term memory and a governed runtime for AI agents."""

import os as _os

# Our matrices are small (≤ a few hundred rows): BLAS worker threads only spin against the
# server's own threads on a small machine (measured: eigh took 23% of a busy API worker).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
# The same for the tokenizer's thread pool: 8 short queries took 250 µs of CPU in parallel, 130 µs
# on the calling thread.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

from somastack.client import AsyncClient, Client, SomaAPIError  # noqa: E402

__all__ = ["AsyncClient", "Client", "SomaAPIError", "__version__"]
