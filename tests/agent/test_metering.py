"""Model calls under a budget with the real local model and the real ledger."""

from __future__ import annotations

from contextlib import aclosing

import psycopg
import pytest

from somastack.agent.llm import ChatRequest, FallbackChain, LocalProvider, Message, OpenAIProvider
from somastack.agent.metering import MeteredLLM, prompt_token_bound
from somastack.errors import BudgetExhausted, ModelOutputInvalid, ProviderUnavailable
from somastack.ledger import Limits, PriceTable, Scope, budget, set_budget
from somastack.ledger.hold import Direct
from somastack.store import Database

PRICES = PriceTable.from_mapping({"tokens_per_1k": 1, "tokens_per_1k:openai": 10})
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}


def ask(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(messages=[Message("system", "Be brief."), Message("user", text)],
                       **kw)  # type: ignore[arg-type]


def tokens(db: psycopg.Connection, tenant: str) -> int:
    row = db.execute("SELECT coalesce(sum(tokens), 0) FROM usage_ledger WHERE tenant_id = %s",
                     (tenant,)).fetchone()
    return int(row[0]) if row else 0


async def held(database: Database, tenant: str) -> int:
    state = await budget(database, tenant, "session:s")
    assert state is not None
    return state.reserved.tokens


@pytest.mark.asyncio
async def test_complete_settles_reported_tokens(
    local_llm: LocalProvider, database: Database, tenant: str, db: psycopg.Connection
) -> None:
    await set_budget(database, tenant, "session:s", Limits(tokens=10_000))
    llm = MeteredLLM(local_llm, PRICES, Direct(database, Scope(tenant, "a", "s")))
    request = ask("Name a colour.", max_tokens=8)
    out = await llm.complete(request)
    assert tokens(db, tenant) == out.usage.total_tokens > 0
    assert prompt_token_bound(request) >= out.usage.prompt_tokens
    assert await held(database, tenant) == 0


@pytest.mark.asyncio
async def test_worst_case_over_budget_refuses_before_the_model_runs(
    local_llm: LocalProvider, database: Database, tenant: str, db: psycopg.Connection
) -> None:
    await set_budget(database, tenant, "session:s", Limits(tokens=60))
    llm = MeteredLLM(local_llm, PRICES, Direct(database, Scope(tenant, "a", "s")))
    with pytest.raises(BudgetExhausted) as err:
        await llm.complete(ask("Name a colour.", max_tokens=64))
    assert err.value.field == "tokens" and tokens(db, tenant) == 0


@pytest.mark.asyncio
async def test_invalid_output_is_still_charged(
    local_llm: LocalProvider, database: Database, tenant: str, db: psycopg.Connection
) -> None:
    await set_budget(database, tenant, "session:s", Limits(tokens=10_000))
    llm = MeteredLLM(local_llm, PRICES, Direct(database, Scope(tenant, "a", "s")))
    with pytest.raises(ModelOutputInvalid) as err:
        await llm.complete(ask("Capital of France?", json_schema=CITY, max_tokens=3))
    assert err.value.usage_tokens > 0 and tokens(db, tenant) == err.value.usage_tokens
    assert await held(database, tenant) == 0


@pytest.mark.asyncio
async def test_streams_settle_on_completion_and_on_abandon(
    local_llm: LocalProvider, database: Database, tenant: str, db: psycopg.Connection
) -> None:
    await set_budget(database, tenant, "session:s", Limits(tokens=10_000))
    llm = MeteredLLM(local_llm, PRICES, Direct(database, Scope(tenant, "a", "s")))
    chunks = [c async for c in llm.stream(ask("Say hello.", max_tokens=8))]
    final = chunks[-1].completion
    assert final is not None and tokens(db, tenant) == final.usage.total_tokens
    request = ask("Count to twenty in words.", max_tokens=64)
    async with aclosing(llm.stream(request)) as stream:
        async for chunk in stream:
            assert chunk.delta
            break
    assert tokens(db, tenant) == final.usage.total_tokens + prompt_token_bound(request) + 1
    assert await held(database, tenant) == 0


@pytest.mark.asyncio
async def test_unavailable_providers_release_the_hold(
    database: Database, tenant: str, db: psycopg.Connection, closed_port: int
) -> None:
    await set_budget(database, tenant, "session:s", Limits(tokens=10_000))
    dead = FallbackChain([OpenAIProvider(f"http://127.0.0.1:{closed_port}/v1", "m", None, 5)])
    llm = MeteredLLM(dead, PRICES, Direct(database, Scope(tenant, "a", "s")))
    try:
        with pytest.raises(ProviderUnavailable):
            await llm.complete(ask("hi"))
        with pytest.raises(ProviderUnavailable):
            [c async for c in llm.stream(ask("hi"))]
    finally:
        await llm.aclose()
    assert tokens(db, tenant) == 0 and await held(database, tenant) == 0
