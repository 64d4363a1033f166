"""Reserve-before / settle-after on the real PostgreSQL: limits hold under concurrency, the
ledger gets exactly what was settled, and nothing is held or written for a refused step."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from somastack.errors import BudgetExhausted, Conflict, InvalidInput
from somastack.ledger import (
    Amounts,
    Limits,
    Scope,
    budget,
    expire_reservations,
    release,
    reserve,
    set_budget,
    settle,
    usage_report,
)
from somastack.store import Database


def ledger_rows(db: psycopg.Connection, tenant: str) -> list[tuple[str, str, int, int, Decimal]]:
    return db.execute("SELECT agent, session, tokens, tool_calls, cost_cents FROM usage_ledger "
                      "WHERE tenant_id = %s ORDER BY session", (tenant,)).fetchall()


@pytest.mark.asyncio
async def test_reserve_refuses_past_the_limit_and_settle_records(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    scope = Scope(tenant, agent="a1", session="s1")
    await set_budget(database, tenant, "session:s1", Limits(tokens=1000, cost_cents=Decimal(1)))
    held = await reserve(database, scope, Amounts(tokens=600, cost_cents=Decimal("0.06")))
    with pytest.raises(BudgetExhausted) as err:
        await reserve(database, scope, Amounts(tokens=600))
    assert err.value.field == "tokens" and err.value.type == "budget_exhausted"
    state = await budget(database, tenant, "session:s1")
    assert state is not None and state.reserved.tokens == 600 and state.spent.tokens == 0
    assert ledger_rows(db, tenant) == []

    await settle(database, held, Amounts(tokens=400, cost_cents=Decimal("0.04")))
    state = await budget(database, tenant, "session:s1")
    assert state is not None and (state.spent.tokens, state.reserved.tokens) == (400, 0)
    assert state.remaining()["tokens"] == 600 and state.remaining()["tool_calls"] is None
    assert ledger_rows(db, tenant) == [("a1", "s1", 400, 0, Decimal("0.04"))]
    await reserve(database, scope, Amounts(tokens=600))  # exactly fills the limit


@pytest.mark.asyncio
async def test_concurrent_reservations_never_overspend(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    await set_budget(database, tenant, "tenant", Limits(tool_calls=5))

    async def one_call(i: int) -> bool:
        scope = Scope(tenant, agent="a", session=f"s{i}")
        try:
            held = await reserve(database, scope, Amounts(tool_calls=1))
        except BudgetExhausted:
            return False
        await settle(database, held, Amounts(tool_calls=1, cost_cents=Decimal("0.05")))
        return True

    results = await asyncio.gather(*(one_call(i) for i in range(12)))
    assert sum(results) == 5
    state = await budget(database, tenant, "tenant")
    assert state is not None and state.spent.tool_calls == 5 and state.reserved.tool_calls == 0
    assert sum(r[3] for r in ledger_rows(db, tenant)) == 5


@pytest.mark.asyncio
async def test_release_and_double_settle(database: Database, tenant: str,
                                         db: psycopg.Connection) -> None:
    await set_budget(database, tenant, "agent:bot", Limits(tokens=10))
    held = await reserve(database, Scope(tenant, agent="bot"), Amounts(tokens=10))
    await release(database, held)
    state = await budget(database, tenant, "agent:bot")
    assert state is not None and state.reserved.tokens == 0 and state.spent.tokens == 0
    with pytest.raises(Conflict):
        await settle(database, held, Amounts(tokens=1))
    assert ledger_rows(db, tenant) == []


@pytest.mark.asyncio
async def test_stale_reservations_expire(database: Database, tenant: str) -> None:
    await set_budget(database, tenant, "session:x", Limits(tokens=5))
    await reserve(database, Scope(tenant, session="x"), Amounts(tokens=5))
    with pytest.raises(BudgetExhausted):
        await reserve(database, Scope(tenant, session="x"), Amounts(tokens=1))
    assert await expire_reservations(database, older_than_s=0) >= 1
    await reserve(database, Scope(tenant, session="x"), Amounts(tokens=5))


@pytest.mark.asyncio
async def test_budgets_are_per_tenant(database: Database, tenant: str) -> None:
    await set_budget(database, tenant, "tenant", Limits(tokens=1))
    other = f"t-{uuid.uuid4().hex[:12]}"
    assert await budget(database, other, "tenant") is None
    await reserve(database, Scope(other), Amounts(tokens=100))  # no budget there: unlimited


@pytest.mark.asyncio
async def test_usage_report_groups_and_checks_input(database: Database, tenant: str) -> None:
    for session, tokens in (("s1", 10), ("s2", 5), ("s1", 1)):
        held = await reserve(database, Scope(tenant, "a", session), Amounts(tokens=tokens))
        await settle(database, held, Amounts(tokens=tokens, cost_cents=Decimal(tokens) / 100))
    rows = await usage_report(database, tenant, group_by=["session"])
    assert [(r["session"], r["tokens"]) for r in rows] == [("s1", 11), ("s2", 5)]
    assert all(type(r["tokens"]) is int for r in rows)
    now = datetime.now(UTC)
    (total,) = await usage_report(database, tenant, start=now - timedelta(hours=1),
                                  end=now + timedelta(minutes=1))
    assert total["tokens"] == 16 and total["cost_cents"] == Decimal("0.16")
    with pytest.raises(InvalidInput) as err:
        await usage_report(database, tenant, group_by=["week"])
    assert err.value.field == "group_by"
    with pytest.raises(InvalidInput) as err:
        await usage_report(database, tenant, start=now, end=now)
    assert err.value.field == "from"
    with pytest.raises(InvalidInput) as err:
        await set_budget(database, tenant, "team:x", Limits())
    assert err.value.field == "scope"


@pytest.mark.asyncio
async def test_charge_spends_exact_amounts_at_once_and_refund_undoes_it(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    from somastack.ledger import charge, refund

    scope = Scope(tenant, agent="a1", session="s9")
    await set_budget(database, tenant, "session:s9", Limits(storage_bytes=1000))
    minute = await charge(database, scope, Amounts(storage_bytes=700))
    with pytest.raises(BudgetExhausted) as err:  # refused: nothing spent, nothing recorded
        await charge(database, scope, Amounts(storage_bytes=400))
    assert err.value.field == "storage_bytes"
    state = await budget(database, tenant, "session:s9")
    assert state is not None and state.spent.storage_bytes == 700 and state.reserved.storage_bytes == 0
    row = db.execute("SELECT storage_bytes FROM usage_ledger WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row == (700,)
    await refund(database, scope, Amounts(storage_bytes=700), minute)
    state = await budget(database, tenant, "session:s9")
    assert state is not None and state.spent.storage_bytes == 0
    row = db.execute("SELECT storage_bytes FROM usage_ledger WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row == (0,)
