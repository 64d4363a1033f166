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
from somastack.store.oneshot import run_one

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


async def _explain_refusal(db: Database, scope: Scope, need: Amounts) -> None:
    """A statement refused `need` (holding nothing): raise BudgetExhausted naming the budget
    and dimension that cannot cover it (read under lock, so the answer is current)."""
    async with db.tenant(scope.tenant) as conn:
        await _lock_covering(conn, scope.tenant, scope.budget_scopes(), need)
    raise BudgetExhausted("a budget of this scope cannot cover the step", field="budget")


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


# The budget rows of the scopes, locked in scope order (concurrent holds cannot deadlock).
_LOCKED = ("locked AS (SELECT * FROM budgets WHERE tenant_id = %(tenant)s "
           "AND scope = ANY({scopes}) ORDER BY scope FOR UPDATE)")
_FITS = " AND ".join(f"(limit_{d} IS NULL OR %(n_{d})s <= 0 OR "
                     f"spent_{d} + reserved_{d} + %(n_{d})s <= limit_{d})" for d in DIMENSIONS)
_SHIFT = ", ".join([f"reserved_{d} = b.reserved_{d} + %(r_{d})s" for d in DIMENSIONS]
                   + [f"spent_{d} = b.spent_{d} + %(s_{d})s" for d in DIMENSIONS])
_RECORD = (f"INSERT INTO usage_ledger (tenant_id, agent, session, ts_minute, {_COLS}) "
           "SELECT %(tenant)s, %(agent)s, %(session)s, date_trunc('minute', now()), "
           + ", ".join(f"%(s_{d})s" for d in DIMENSIONS) + " WHERE {guard} "
           "ON CONFLICT (tenant_id, agent, session, ts_minute) DO UPDATE SET "
           + ", ".join(f"{d} = usage_ledger.{d} + EXCLUDED.{d}" for d in DIMENSIONS))


# reserved -= what the hold `{held}` (a CTE of one row) gave back; spent += the spent params
_GIVE_BACK = ", ".join([f"reserved_{d} = b.reserved_{d} - coalesce((SELECT {d} FROM {{held}}), 0)"
                        for d in DIMENSIONS] + [f"spent_{d} = b.spent_{d} + %(s_{d})s"
                                                for d in DIMENSIONS])


def _params(scope: Scope, *, need: Amounts | None = None, reserved: Sequence[int | Decimal] = (),
            spent: Sequence[int | Decimal] = ()) -> dict[str, Any]:
    zeros = Amounts().values()
    need = need or Amounts()
    p: dict[str, Any] = {"tenant": scope.tenant, "agent": scope.agent, "session": scope.session,
                         "scopes": scope.budget_scopes()}
    for d, n, r, sp in zip(DIMENSIONS, need.values(), reserved or zeros, spent or zeros,
                           strict=True):
        p[f"n_{d}"], p[f"r_{d}"], p[f"s_{d}"] = n, r, sp
    return p


async def reserve(db: Database, scope: Scope, need: Amounts) -> Reservation:
    """Hold `need` against every budget of the scope, or raise BudgetExhausted holding nothing.

    One statement: lock the rows, check every limit, and only if all fit add the hold and
    record the reservation.
    """
    rid = uuid.uuid4()
    params = {**_params(scope, need=need, reserved=need.values()), "id": rid}
    sql = (f"WITH {_LOCKED.format(scopes='%(scopes)s')}, "
           f"refused AS (SELECT scope FROM locked WHERE NOT ({_FITS})), "
           f"held AS (UPDATE budgets u SET {_SHIFT}, updated_at = now() FROM locked b "
           "WHERE u.tenant_id = b.tenant_id AND u.scope = b.scope "
           "AND NOT EXISTS (SELECT 1 FROM refused) RETURNING u.scope), "
           f"opened AS (INSERT INTO budget_reservations (id, tenant_id, agent, session, scopes, "
           f"{_COLS}) SELECT %(id)s, %(tenant)s, %(agent)s, %(session)s, %(scopes)s, "
           + ", ".join(f"%(n_{d})s" for d in DIMENSIONS)
           + " WHERE NOT EXISTS (SELECT 1 FROM refused) RETURNING id) "
           "SELECT (SELECT count(*) FROM refused) AS refused")
    (row,) = await run_one(db, scope.tenant, sql, params)
    if row["refused"]:  # nothing was held; say which budget and dimension refused
        await _explain_refusal(db, scope, need)
    return Reservation(rid, scope, need)


async def _close(db: Database, reservation: Reservation, actual: Amounts | None) -> None:
    """Delete the open reservation, give back what it still holds (as stored: a hold that was
    extended or partly spent holds what the row says) and (settling) spend and record `actual`;
    one statement. Conflict if the reservation was already closed."""
    s, spent = reservation.scope, actual.values() if actual is not None else ()
    params = {**_params(s, spent=spent), "id": reservation.id}
    record = actual is not None and any(actual.values())
    sql = (f"WITH closed AS (DELETE FROM budget_reservations WHERE id = %(id)s "
           f"AND tenant_id = %(tenant)s RETURNING scopes, {_COLS}), "
           f"{_LOCKED.format(scopes='(SELECT scopes FROM closed)::text[]')}, "
           f"shifted AS (UPDATE budgets u SET {_GIVE_BACK.format(held='closed')}, "
           "updated_at = now() FROM locked b "
           "WHERE u.tenant_id = b.tenant_id AND u.scope = b.scope RETURNING u.scope)"
           + (f", recorded AS ({_RECORD.format(guard='EXISTS (SELECT 1 FROM closed)')})"
              if record else "")
           + " SELECT (SELECT count(*) FROM closed) AS closed")
    (row,) = await run_one(db, s.tenant, sql, params)
    if not row["closed"]:
        raise Conflict("reservation already settled, released or expired", field="reservation")


async def settle(db: Database, reservation: Reservation, actual: Amounts) -> None:
    """Replace the hold by the actual usage: budgets' spent and the ledger's minute row."""
    await _close(db, reservation, actual)


async def release(db: Database, reservation: Reservation) -> None:
    """Give the hold back unused (the step did not run); nothing reaches the ledger."""
    await _close(db, reservation, None)


async def charge(db: Database, scope: Scope, actual: Amounts) -> datetime:
    """Spend a known amount now (one statement): BudgetExhausted, spending nothing, if any
    budget of the scope cannot cover it. For steps whose cost is exact before they run.
    Returns the ledger minute it was recorded in (for `refund`)."""
    params = _params(scope, need=actual, spent=actual.values())
    sql = (f"WITH {_LOCKED.format(scopes='%(scopes)s')}, "
           f"refused AS (SELECT scope FROM locked WHERE NOT ({_FITS})), "
           f"spent AS (UPDATE budgets u SET {_SHIFT}, updated_at = now() FROM locked b "
           "WHERE u.tenant_id = b.tenant_id AND u.scope = b.scope "
           "AND NOT EXISTS (SELECT 1 FROM refused) RETURNING u.scope), "
           f"recorded AS ({_RECORD.format(guard='NOT EXISTS (SELECT 1 FROM refused)')}) "
           "SELECT (SELECT count(*) FROM refused) AS refused, "
           "date_trunc('minute', now()) AS minute")
    (row,) = await run_one(db, scope.tenant, sql, params)
    if row["refused"]:
        await _explain_refusal(db, scope, actual)
    return row["minute"]  # type: ignore[no-any-return]


async def extend(db: Database, reservation: Reservation, more: Amounts) -> bool:
    """Hold `more` on an open reservation (one statement); BudgetExhausted, holding nothing more,
    if a budget cannot cover it. False when the reservation no longer exists (expired)."""
    params = {**_params(reservation.scope, need=more, reserved=more.values()),
              "id": reservation.id}
    sql = ("WITH res AS (SELECT scopes FROM budget_reservations WHERE id = %(id)s "
           "AND tenant_id = %(tenant)s FOR UPDATE), "
           f"{_LOCKED.format(scopes='(SELECT scopes FROM res)::text[]')}, "
           f"refused AS (SELECT scope FROM locked WHERE NOT ({_FITS})), "
           f"held AS (UPDATE budgets u SET {_SHIFT}, updated_at = now() FROM locked b "
           "WHERE u.tenant_id = b.tenant_id AND u.scope = b.scope "
           "AND NOT EXISTS (SELECT 1 FROM refused) RETURNING u.scope), "
           "grown AS (UPDATE budget_reservations SET created_at = now(), "
           + ", ".join(f"{d} = {d} + %(n_{d})s" for d in DIMENSIONS)
           + " WHERE id = %(id)s AND EXISTS (SELECT 1 FROM res) "
           "AND NOT EXISTS (SELECT 1 FROM refused) RETURNING id) "
           "SELECT (SELECT count(*) FROM res) AS open, (SELECT count(*) FROM refused) AS refused")
    scope = reservation.scope
    (row,) = await run_one(db, scope.tenant, sql, params)
    if row["refused"]:
        await _explain_refusal(db, scope, more)
    return bool(row["open"])


async def consume(db: Database, reservation: Reservation, actual: Amounts) -> None:
    """Spend `actual` out of an open reservation that stays open (one statement): the hold
    shrinks by as much of `actual` as it still covers, spent grows by all of it (an overrun is
    recorded, never hidden), and the ledger's minute row records it. A reservation that has
    expired meanwhile still gets its usage spent and recorded. Refreshes the hold's age."""
    s = reservation.scope
    params = {**_params(s, spent=actual.values()), "id": reservation.id}
    # the reservation row is locked before the budget rows, like every other statement here
    sql = (f"WITH res AS (SELECT id, {_COLS} FROM budget_reservations WHERE id = %(id)s "
           "AND tenant_id = %(tenant)s FOR UPDATE), "
           "took AS (SELECT " + ", ".join(f"least({d}, %(s_{d})s) AS {d}" for d in DIMENSIONS)
           + " FROM res), "
           "shrunk AS (UPDATE budget_reservations r SET created_at = now(), "
           + ", ".join(f"{d} = r.{d} - t.{d}" for d in DIMENSIONS)
           + " FROM took t WHERE r.id = %(id)s RETURNING r.id), "
           "locked AS (SELECT * FROM budgets WHERE tenant_id = %(tenant)s "
           "AND scope = ANY(%(scopes)s) AND (SELECT count(*) FROM res) >= 0 "
           "ORDER BY scope FOR UPDATE), "
           f"shifted AS (UPDATE budgets u SET {_GIVE_BACK.format(held='took')}, "
           "updated_at = now() FROM locked b "
           "WHERE u.tenant_id = b.tenant_id AND u.scope = b.scope RETURNING u.scope), "
           f"recorded AS ({_RECORD.format(guard='TRUE')}) "
           "SELECT (SELECT count(*) FROM shrunk) AS open")
    if not any(actual.values()):
        return
    await run_one(db, s.tenant, sql, params)


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
