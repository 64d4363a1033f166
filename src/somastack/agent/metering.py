"""Model calls under a budget: reserve the worst case before each call, settle the real usage.

Worst case = an upper estimate of the prompt (UTF-8 bytes / 2: real tokenisers average about
4 bytes a token) + `max_tokens`, priced at the dearest provider of the chain. After the call the
reported usage is settled at the answering provider's price. A call that fails with nothing
generated (every provider unavailable, bad input) releases its hold; invalid model output is
charged the tokens it consumed; an abandoned stream is charged the prompt estimate plus one
token per delta it produced.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from somastack.agent.llm.types import ChatRequest, Completion, LLMProvider, StreamChunk
from somastack.errors import ModelOutputInvalid
from somastack.ledger import Amounts, PriceTable
from somastack.ledger.hold import Account

PER_MESSAGE_TOKENS = 8  # chat-template framing per message


def prompt_token_bound(request: ChatRequest) -> int:
    """An upper estimate of the prompt's tokens (messages, tool specs and schema)."""
    size = sum(len(m.content.encode()) + len(json.dumps([c.arguments for c in m.tool_calls]))
               for m in request.messages)
    size += len(json.dumps([t.parameters for t in request.tools])) + sum(
        len(t.name) + len(t.description) for t in request.tools)
    size += len(json.dumps(request.json_schema)) if request.json_schema else 0
    return size // 2 + PER_MESSAGE_TOKENS * len(request.messages)


class MeteredLLM:
    """An LLMProvider that charges every call to a ledger account (ledger/hold.py): per-call
    reservations (`Direct`) or a turn's hold (`Hold`)."""

    def __init__(self, provider: LLMProvider, prices: PriceTable, account: Account) -> None:
        self.provider = provider
        self.name = provider.name
        self.model = provider.model
        self.prices = prices
        self.account = account
        members = getattr(provider, "providers", [provider])
        self._names = [p.name for p in members]
        self.provider_ms = 0.0  # time spent in the provider itself (the ledger's work excluded)

    def worst_case(self, request: ChatRequest) -> Amounts:
        """What the call can cost at most: the prompt bound plus max_tokens, at the dearest
        provider of the chain."""
        return self.dearest(prompt_token_bound(request) + request.max_tokens)

    def dearest(self, tokens: int) -> Amounts:
        """`tokens` priced at the dearest provider of the chain."""
        return max((self.prices.charge(tokens=tokens, provider=n) for n in self._names),
                   key=lambda a: a.cost_cents)

    async def _reserve(self, request: ChatRequest) -> object:
        draw = await self.account.take(self.worst_case(request))
        self.account.flush()  # the model is about to run: deferred ledger writes go now
        return draw

    async def _settle(self, hold: object, tokens: int, provider: str) -> None:
        await self.account.spend(hold, self.prices.charge(tokens=tokens, provider=provider))

    async def complete(self, request: ChatRequest) -> Completion:
        hold = await self._reserve(request)
        started = time.perf_counter()
        try:
            completion = await self.provider.complete(request)
        except ModelOutputInvalid as exc:
            self.provider_ms += (time.perf_counter() - started) * 1000
            await self._settle(hold, exc.usage_tokens, self._names[0])
            raise
        except BaseException:
            self.provider_ms += (time.perf_counter() - started) * 1000
            await self.account.give_back(hold)
            raise
        self.provider_ms += (time.perf_counter() - started) * 1000
        await self._settle(hold, completion.usage.total_tokens, completion.provider)
        return completion

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamChunk, None]:
        hold = await self._reserve(request)
        deltas, settled = 0, False
        started = time.perf_counter()
        try:
            async with aclosing(self.provider.stream(request)) as chunks:
                async for chunk in chunks:
                    self.provider_ms += (time.perf_counter() - started) * 1000
                    if chunk.completion is not None:
                        c = chunk.completion
                        await self._settle(hold, c.usage.total_tokens, c.provider)
                        settled = True
                    else:
                        deltas += 1
                    yield chunk
                    started = time.perf_counter()  # the consumer's time is not the model's
        except ModelOutputInvalid as exc:
            if not settled:
                await self._settle(hold, exc.usage_tokens, self._names[0])
                settled = True
            raise
        finally:
            if not settled:
                if deltas:
                    await self._settle(hold, prompt_token_bound(request) + deltas, self._names[0])
                else:
                    await self.account.give_back(hold)

    async def aclose(self) -> None:
        await self.provider.aclose()
