"""Providers in order of preference: a provider that is unavailable hands over to the next.

Only ProviderUnavailable moves on (bad input or invalid model output would fail the same way
everywhere). A stream falls back only before its first chunk; once text has reached the caller
the stream's provider is committed. Every hand-over is recorded in the completion's `fallbacks`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from somastack.agent.llm.structured import check_request
from somastack.agent.llm.types import ChatRequest, Completion, Fallback, LLMProvider, StreamChunk
from somastack.errors import InvalidInput, ProviderUnavailable


class FallbackChain:
    """An LLMProvider made of several, tried in order."""

    name = "chain"

    def __init__(self, providers: list[LLMProvider]) -> None:
        if not providers:
            raise InvalidInput("at least one provider is required", field="llm_providers")
        self.providers = providers
        self.model = providers[0].model

    def _exhausted(self, fallbacks: list[Fallback]) -> ProviderUnavailable:
        tried = "; ".join(f"{f.provider}: {f.detail}" for f in fallbacks)
        return ProviderUnavailable(f"every provider failed ({tried})", field="provider")

    async def complete(self, request: ChatRequest) -> Completion:
        check_request(request)
        fallbacks: list[Fallback] = []
        for provider in self.providers:
            try:
                completion = await provider.complete(request)
            except ProviderUnavailable as exc:
                fallbacks.append(Fallback(provider.name, exc.type, exc.detail))
                continue
            completion.fallbacks = fallbacks + completion.fallbacks
            return completion
        raise self._exhausted(fallbacks)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamChunk, None]:
        check_request(request)
        fallbacks: list[Fallback] = []
        for provider in self.providers:
            chunks = provider.stream(request)
            try:
                first = await anext(chunks)
            except ProviderUnavailable as exc:
                fallbacks.append(Fallback(provider.name, exc.type, exc.detail))
                await chunks.aclose()
                continue
            try:
                chunk: StreamChunk | None = first
                while chunk is not None:
                    if chunk.completion is not None:
                        chunk.completion.fallbacks = fallbacks + chunk.completion.fallbacks
                    yield chunk
                    chunk = await anext(chunks, None)
            finally:
                await chunks.aclose()
            return
        raise self._exhausted(fallbacks)

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.aclose()
