"""Budgets with reserve-before / settle-after, so a budget is never over-spent.

`reserve` locks the scope's budget rows (tenant, agent, session; in a fixed order, so concurrent
reservations cannot deadlock), checks spent + reserved + need ≤ limit in every dimension and
holds the amounts; `settle` turns the hold into spent with the actual usage and adds it to the
usage ledger's row for the current minute, in the same transaction. Callers reserve an upper
bound of what the step can use (prompt estimate + max_tokens, tool cost + max egress), so what
is settled never exceeds what was reserved; an overrun is still recorded as spent, never hidden.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from somastack.errors import BudgetExhausted, Conflict, InvalidInput
from somastack.ledger.usage import DIMENSIONS, Amounts, BudgetState, Limits, Reservation, Scope
from somastack.store import Database

_COLS = ", ".join(DIMENSIONS)
_SCOPE_PREFIXES = ("agent:", "session:")


async def fetch_rows(conn: psycopg.AsyncConnection, sql: str, params: Any) -> list[dict[str, Any]]:
    """Run one statement; its rows as dicts (typed, whatever the connection's row factory)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []


def check_scope(scope: str) -> None:
    if scope != "tenant" and not (scope.startswith(_SCOPE_PREFIXES) and scope.partition(":")[2]):
        raise InvalidInput("expected 'tenant', 'agent:<id>' or 'session:<id>'", field="scope")


def _state(row: dict[str, Any]) -> BudgetState:
    return BudgetState(
        scope=row["scope"],
        limits=Limits(*(row[f"limit_{d}"] for d in DIMENSIONS)),
        spent=Amounts(*(row[f"spent_{d}"] for d in DIMENSIONS)),
        reserved=Amounts(*(row[f"reserved_{d}"] for d in DIMENSIONS)),
    )


async def set_budget(db: Database, tenant: str, scope: str, limits: Limits) -> BudgetState:
    """Create or change a budget's limits (what was spent stays spent)."""
    async with db.tenant(tenant) as conn:
        return await write_budget(conn, tenant, scope, limits)


async def write_budget(conn: psycopg.AsyncConnection, tenant: str, scope: str, limits: Limits
                       ) -> BudgetState:
    """`set_budget` on the caller's transaction (e.g. with the session token it budgets)."""
    check_scope(scope)
    names = [f"limit_{d}" for d in DIMENSIONS]
    rows = await fetch_rows(
        conn,
        f"INSERT INTO budgets (tenant_id, scope, {', '.join(names)}) "
        f"VALUES (%s, %s, {', '.join(['%s'] * len(names))}) "
        f"ON CONFLICT (tenant_id, scope) DO UPDATE SET "
        f"{', '.join(f'{n} = EXCLUDED.{n}' for n in names)}, updated_at = now() RETURNING *",
        (tenant, scope, *limits.values()),
    )
    return _state(rows[0])


async def budget(db: Database, tenant: str, scope: str) -> BudgetState | None:
    """A budget's limits, spent and reserved amounts; None when the scope has no budget."""
    check_scope(scope)
    async with db.tenant(tenant) as conn:
        rows = await fetch_rows(conn, "SELECT * FROM budgets WHERE tenant_id = %s AND scope = %s",
                                (tenant, scope))
    return _state(rows[0]) if rows else None


def _refusal(state: BudgetState, need: Amounts) -> BudgetExhausted | None:
    for dim, lim, spent, held, want in zip(DIMENSIONS, state.limits.values(), state.spent.values(),
                                           state.reserved.values(), need.values(), strict=True):
        if lim is not None and want > 0 and spent + held + want > lim:
            return BudgetExhausted(
                f"budget {state.scope!r}: {dim} needs {want}, has {max(lim - spent - held, 0)} "
                f"left of {lim}", field=dim)
    return None


async def _locked_budgets(conn: psycopg.AsyncConnection, tenant: str, scopes: list[str]
                          ) -> list[BudgetState]:
    rows = await fetch_rows(
        conn, "SELECT * FROM budgets WHERE tenant_id = %s AND scope = ANY(%s) ORDER BY scope FOR UPDATE",
        (tenant, scopes))
    return [_state(r) for r in rows]


async def _lock_covering(conn: psycopg.AsyncConnection, tenant: str, scopes: list[str],
                         need: Amounts) -> None:
    """Lock the scope's budgets; BudgetExhausted (naming the dimension) if one cannot cover."""
    for state in await _locked_budgets(conn, tenant, scopes):
        refusal = _refusal(state, need)
        if refusal is not None:
            raise refusal


async def _shift(conn: psycopg.AsyncConnection, tenant: str, scopes: list[str],
                 reserved: Sequence[int | Decimal], spent: Sequence[int | Decimal]) -> None:
    """reserved += `reserved`, spent += `spent` on the scope's budget rows (negatives allowed)."""
    sets = [f"reserved_{d} = reserved_{d} + %s" for d in DIMENSIONS]
    sets += [f"spent_{d} = spent_{d} + %s" for d in DIMENSIONS]
    await conn.execute(
        f"UPDATE budgets SET {', '.join(sets)}, updated_at = now() "
        "WHERE tenant_id = %s AND scope = ANY(%s)",
        (*reserved, *spent, tenant, scopes))


def _negated(amounts: Amounts) -> tuple[int | Decimal, ...]:
    return tuple(-v for v in amounts.values())


async def reserve(db: Database, scope: Scope, need: Amounts) -> Reservation:
    """Hold `need` against every budget of the scope, or raise BudgetExhausted holding nothing."""
    scopes = scope.budget_scopes()
    rid = uuid.uuid4()
    async with db.tenant(scope.tenant) as conn:
        await _lock_covering(conn, scope.tenant, scopes, need)
        await _shift(conn, scope.tenant, scopes, need.values(), Amounts().values())
        await conn.execute(
            f"INSERT INTO budget_reservations (id, tenant_id, agent, session, scopes, {_COLS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (rid, scope.tenant, scope.agent, scope.session, scopes, *need.values()))
    return Reservation(rid, scope, need)


async def _close(conn: psycopg.AsyncConnection, reservation: Reservation) -> list[str]:
    """Delete the open reservation and lock its budgets; Conflict if it was already closed."""
    rows = await fetch_rows(
        conn, "DELETE FROM budget_reservations WHERE id = %s AND tenant_id = %s RETURNING scopes",
        (reservation.id, reservation.scope.tenant))
    if not rows:
        raise Conflict("reservation already settled, released or expired", field="reservation")
    scopes = list(rows[0]["scopes"])
    await _locked_budgets(conn, reservation.scope.tenant, scopes)
    return scopes


async def settle(db: Database, reservation: Reservation, actual: Amounts) -> None:
    """Replace the hold by the actual usage: budgets' spent and the ledger's minute row."""
    s = reservation.scope
    async with db.tenant(s.tenant) as conn:
        scopes = await _close(conn, reservation)
        await _shift(conn, s.tenant, scopes, _negated(reservation.amounts), actual.values())
        await record(conn, s, actual)


async def release(db: Database, reservation: Reservation) -> None:
    """Give the hold back unused (the step did not run); nothing reaches the ledger."""
    async with db.tenant(reservation.scope.tenant) as conn:
        scopes = await _close(conn, reservation)
        await _shift(conn, reservation.scope.tenant, scopes, _negated(reservation.amounts),
                     Amounts().values())


async def charge(db: Database, scope: Scope, actual: Amounts) -> datetime:
    """Spend a known amount now (one transaction): BudgetExhausted, spending nothing, if any
    budget of the scope cannot cover it. For steps whose cost is exact before they run.
    Returns the ledger minute it was recorded in (for `refund`)."""
    scopes = scope.budget_scopes()
    async with db.tenant(scope.tenant) as conn:
        await _lock_covering(conn, scope.tenant, scopes, actual)
        await _shift(conn, scope.tenant, scopes, Amounts().values(), actual.values())
        await record(conn, scope, actual)
        rows = await fetch_rows(conn, "SELECT date_trunc('minute', now()) AS minute", ())
    return rows[0]["minute"]  # type: ignore[no-any-return]


async def refund(db: Database, scope: Scope, amounts: Amounts, minute: datetime) -> None:
    """Undo a `charge` whose step then failed: budgets and that minute's ledger row."""
    scopes = scope.budget_scopes()
    async with db.tenant(scope.tenant) as conn:
        await _locked_budgets(conn, scope.tenant, scopes)
        await _shift(conn, scope.tenant, scopes, Amounts().values(), _negated(amounts))
        await conn.execute(
            "UPDATE usage_ledger SET " + ", ".join(f"{d} = {d} - %s" for d in DIMENSIONS)
            + " WHERE tenant_id = %s AND agent = %s AND session = %s AND ts_minute = %s",
            (*amounts.values(), scope.tenant, scope.agent, scope.session, minute))


async def record(conn: psycopg.AsyncConnection, scope: Scope, actual: Amounts) -> None:
    """Add usage to the ledger row of (tenant, agent, session, this minute)."""
    if not any(actual.values()):
        return
    await conn.execute(
        f"INSERT INTO usage_ledger (tenant_id, agent, session, ts_minute, {_COLS}) "
        "VALUES (%s, %s, %s, date_trunc('minute', now()), %s, %s, %s, %s, %s) "
        "ON CONFLICT (tenant_id, agent, session, ts_minute) DO UPDATE SET "
        + ", ".join(f"{d} = usage_ledger.{d} + EXCLUDED.{d}" for d in DIMENSIONS),
        (scope.tenant, scope.agent, scope.session, *actual.values()))


async def expire_reservations(db: Database, older_than_s: float) -> int:
    """Release reservations left open longer than `older_than_s` (a crashed step); return count."""
    async with db.system() as conn:
        rows = await fetch_rows(
            conn,
            f"DELETE FROM budget_reservations WHERE created_at < now() - make_interval(secs => %s) "
            f"RETURNING tenant_id, scopes, {_COLS}", (older_than_s,))
        for row in sorted(rows, key=lambda r: (r["tenant_id"], r["scopes"])):
            await _locked_budgets(conn, row["tenant_id"], row["scopes"])
            held = Amounts(*(row[d] for d in DIMENSIONS))
            await _shift(conn, row["tenant_id"], row["scopes"], _negated(held), Amounts().values())
    return len(rows)
