"""A turn's hold on the real PostgreSQL: steps draw on it in memory, extend it when short, their
usage reaches the ledger in order, close gives the rest back, and no budget is ever over-spent."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import psycopg
import pytest

from somastack.errors import BudgetExhausted
from somastack.ledger import Amounts, Limits, Scope, budget, expire_reservations, set_budget
from somastack.ledger.hold import Hold
from somastack.store import Database


def ledger_tokens(db: psycopg.Connection, tenant: str) -> int:
    row = db.execute("SELECT coalesce(sum(tokens), 0) FROM usage_ledger WHERE tenant_id = %s",
                     (tenant,)).fetchone()
    return int(row[0]) if row else 0


async def state(database: Database, tenant: str) -> tuple[int, int]:
    s = await budget(database, tenant, "session:s")
    assert s is not None
    return s.spent.tokens, s.reserved.tokens


async def session_hold(database: Database, tenant: str, *, limit: int, estimate: int) -> Hold:
    """A session budget of `limit` tokens, and a hold on it opened with `estimate`."""
    await set_budget(database, tenant, "session:s", Limits(tokens=limit))
    hold = Hold(database, Scope(tenant, "a", "s"))
    hold.open(Amounts(tokens=estimate))
    return hold


@pytest.mark.asyncio
async def test_steps_draw_on_the_hold_and_close_gives_the_rest_back(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    hold = await session_hold(database, tenant, limit=1000, estimate=500)
    first = await hold.take(Amounts(tokens=200))
    assert await state(database, tenant) == (0, 500)  # one ledger hold for the run
    await hold.spend(first, Amounts(tokens=120))
    assert ledger_tokens(db, tenant) == 0  # written when the caller is waiting anyway, or at close
    hold.flush()
    for _ in range(100):  # the background writer's
        if ledger_tokens(db, tenant) == 120:
            break
        await asyncio.sleep(0.02)
    assert ledger_tokens(db, tenant) == 120 and await state(database, tenant) == (120, 380)
    second = await hold.take(Amounts(tokens=300))
    await hold.give_back(second)  # this step did not run
    assert hold.held()["tokens"] == 380
    await hold.close()
    assert await state(database, tenant) == (120, 0)
    assert ledger_tokens(db, tenant) == 120
    row = db.execute("SELECT count(*) FROM budget_reservations WHERE tenant_id = %s",
                     (tenant,)).fetchone()
    assert row == (0,)


@pytest.mark.asyncio
async def test_a_short_hold_is_extended_and_refused_past_the_limit(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    hold = await session_hold(database, tenant, limit=1000, estimate=100)
    draw = await hold.take(Amounts(tokens=400))  # 300 more held in the ledger
    assert await state(database, tenant) == (0, 400)
    await hold.spend(draw, Amounts(tokens=400))
    with pytest.raises(BudgetExhausted) as err:
        await hold.take(Amounts(tokens=700))  # 400 spent + 700 > 1000
    assert err.value.field == "tokens"
    last = await hold.take(Amounts(tokens=600))  # exactly fills the limit
    await hold.spend(last, Amounts(tokens=600))
    await hold.close()
    assert await state(database, tenant) == (1000, 0)
    assert ledger_tokens(db, tenant) == 1000


@pytest.mark.asyncio
async def test_an_estimate_the_budget_cannot_cover_falls_back_to_exact_holds(
    database: Database, tenant: str
) -> None:
    hold = await session_hold(database, tenant, limit=300, estimate=5000)  # refused: the hold starts empty
    draw = await hold.take(Amounts(tokens=250))
    assert await state(database, tenant) == (0, 250)
    await hold.spend(draw, Amounts(tokens=250))
    with pytest.raises(BudgetExhausted):
        await hold.take(Amounts(tokens=100))
    await hold.close()
    assert await state(database, tenant) == (250, 0)


@pytest.mark.asyncio
async def test_concurrent_holds_never_overspend(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    await set_budget(database, tenant, "tenant", Limits(tokens=1000, cost_cents=Decimal(10)))
    step = Amounts(tokens=30, cost_cents=Decimal("0.3"))

    async def turn(i: int) -> int:
        hold = Hold(database, Scope(tenant, f"a{i % 3}", f"s{i}"))
        hold.open(Amounts(tokens=90, cost_cents=Decimal("0.9")))
        done = 0
        try:
            for _ in range(5):
                draw = await hold.take(step)
                await hold.spend(draw, step)
                done += 1
        except BudgetExhausted:
            pass
        finally:
            await hold.close()
        return done

    steps = sum(await asyncio.gather(*(turn(i) for i in range(12))))
    s = await budget(database, tenant, "tenant")
    assert s is not None and s.reserved.tokens == 0
    assert s.spent.tokens == steps * 30 == ledger_tokens(db, tenant) <= 1000
    assert steps >= 1000 // 30 - 3 * 12 // 3  # refusals only where a budget was really short


@pytest.mark.asyncio
async def test_usage_of_a_hold_that_expired_is_still_recorded(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    hold = await session_hold(database, tenant, limit=1000, estimate=300)
    draw = await hold.take(Amounts(tokens=100))
    await expire_reservations(database, older_than_s=0)  # as if the process had stalled
    assert await state(database, tenant) == (0, 0)
    await hold.spend(draw, Amounts(tokens=80))
    again = await hold.take(Amounts(tokens=400))  # the lost hold is taken afresh
    assert (await state(database, tenant))[1] >= 400
    await hold.spend(again, Amounts(tokens=10))
    await hold.close()
    assert await state(database, tenant) == (90, 0)
    assert ledger_tokens(db, tenant) == 90
