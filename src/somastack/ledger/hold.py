"""Accounts that steps draw their budget from: one reservation per step, or one hold per turn.

Every metered step (a model call, a tool call, a memory write) does the same three things:
`take` its worst case before it runs (BudgetExhausted, nothing held, if a budget cannot cover
it), then `spend` what it really used, or `give_back` the draw if it did not run.

- `Direct` makes each of those one ledger statement: reserve, settle, release.
- `Hold` is for a run of steps (an agent turn). `open` reserves an estimate of the whole run in
  one statement; each step's `take` is then checked against what the hold has left, in memory,
  and only when the hold is short is it extended in the ledger (one statement, BudgetExhausted
  if a budget cannot cover the extension). What steps spend is written to the ledger off the
  caller's path, in order, by one background writer, whenever the caller says it is waiting
  anyway (`flush`, called before each model call): the hold shrinks by the usage, the budgets'
  spent and the usage ledger's minute row grow by it. `close` waits for those writes and
  settles the rest in one statement: the last usage spent and recorded, what is left of the
  hold given back. A budget can never be over-spent: every draw is covered by a ledger hold
  before the step runs (every write refreshes the hold's age, and one step is far shorter than
  the 15-minute expiry of stale holds). If the process dies mid-run, the usage written so far
  stays (all but the steps since the last model call) and the rest of the hold is given back
  when the stale reservation expires.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol

from somastack.errors import BudgetExhausted, Conflict
from somastack.ledger.budgets import consume, extend, release, reserve, settle
from somastack.ledger.usage import DIMENSIONS, Amounts, Reservation, Scope
from somastack.store import Database

log = logging.getLogger("somastack.ledger")
Vec = tuple[int | Decimal, ...]


class Account(Protocol):
    """Where steps take their worst case before running and spend their usage after."""

    async def take(self, need: Amounts) -> object:
        """Hold `need` for one step; BudgetExhausted (nothing held) if a budget cannot cover it."""
        ...

    async def spend(self, draw: object, actual: Amounts) -> None:
        """The step ran: replace its draw by what it used."""
        ...

    async def give_back(self, draw: object) -> None:
        """The step did not run: return its draw unused."""
        ...

    def flush(self) -> None:
        """The caller is about to wait (a model call): a good moment for deferred writes."""
        ...


class Direct:
    """Each step reserves, then settles or releases, in the ledger."""

    def __init__(self, db: Database, scope: Scope) -> None:
        self.db, self.scope = db, scope

    async def take(self, need: Amounts) -> Reservation:
        return await reserve(self.db, self.scope, need)

    async def spend(self, draw: object, actual: Amounts) -> None:
        assert isinstance(draw, Reservation)
        await settle(self.db, draw, actual)

    async def give_back(self, draw: object) -> None:
        assert isinstance(draw, Reservation)
        await release(self.db, draw)

    def flush(self) -> None:
        """Nothing is deferred."""


def _sub(a: Sequence[int | Decimal], b: Sequence[int | Decimal]) -> Vec:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def _add(a: Sequence[int | Decimal], b: Sequence[int | Decimal]) -> Vec:
    return tuple(x + y for x, y in zip(a, b, strict=True))


class Hold:
    """One ledger hold drawn down by a run of steps (see the module's docstring)."""

    def __init__(self, db: Database, scope: Scope) -> None:
        self.db, self.scope = db, scope
        self.reservation: Reservation | None = None
        self._room: Vec = Amounts().values()  # held in the ledger and not drawn by a step
        self._unwritten: Vec = Amounts().values()  # spent, not yet queued for the ledger
        self._writes: asyncio.Queue[Amounts | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._opening: asyncio.Task[None] | None = None

    def open(self, estimate: Amounts) -> None:
        """Start reserving `estimate` in the background (the first `take` waits for it); when
        the budgets cannot cover it the hold starts empty and each step holds what it needs."""
        self._opening = asyncio.create_task(self._open(estimate))

    async def _open(self, estimate: Amounts) -> None:
        if not any(estimate.values()):
            return
        try:
            self.reservation = await reserve(self.db, self.scope, estimate)
        except BudgetExhausted:
            return
        self._room = estimate.values()

    async def _opened(self) -> None:
        if self._opening is not None:
            opening, self._opening = self._opening, None
            await opening

    async def take(self, need: Amounts) -> Amounts:
        await self._opened()
        short = tuple(max(n - r, 0) for n, r in zip(need.values(), self._room, strict=True))
        if any(short):
            await self._grow(Amounts(*short), need)  # type: ignore[arg-type]
        self._room = _sub(self._room, need.values())
        return need

    async def _grow(self, more: Amounts, need: Amounts) -> None:
        await self._flushed()  # a write that failed is raised here, before holding more
        if self.reservation is not None and await extend(self.db, self.reservation, more):
            self._room = _add(self._room, more.values())
            return
        # no hold yet, or it expired (its room went back to the budgets): hold the step afresh
        self.reservation, self._room = None, Amounts().values()
        self.reservation = await reserve(self.db, self.scope, need)
        self._room = need.values()

    async def spend(self, draw: object, actual: Amounts) -> None:
        assert isinstance(draw, Amounts)
        self._room = _add(self._room, _sub(draw.values(), actual.values()))
        self._unwritten = _add(self._unwritten, actual.values())

    async def give_back(self, draw: object) -> None:
        assert isinstance(draw, Amounts)
        self._room = _add(self._room, draw.values())

    def flush(self) -> None:
        """Queue what was spent since the last flush for the background writer."""
        if not any(self._unwritten):
            return
        actual, self._unwritten = Amounts(*self._unwritten), Amounts().values()  # type: ignore[arg-type]
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain_writes(), name=f"hold {self.scope}")
        self._writes.put_nowait(actual)

    async def _drain_writes(self) -> None:
        while (actual := await self._writes.get()) is not None:
            try:
                if self._failure is None:
                    await self._spend_in_ledger(actual)
            except BaseException as exc:  # kept for close(), which raises it
                log.exception("writing usage %s of %s failed", actual, self.scope)
                self._failure = exc
            finally:
                self._writes.task_done()
        self._writes.task_done()

    async def _spend_in_ledger(self, actual: Amounts) -> None:
        if self.reservation is None:  # spent without a hold (cannot happen through take)
            r = Reservation(uuid.uuid4(), self.scope, Amounts())
            await consume(self.db, r, actual)
        else:
            await consume(self.db, self.reservation, actual)

    async def _flushed(self) -> None:
        if self._writer is not None:
            await self._writes.join()
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Wait for the queued writes, then settle in one statement: spend and record what is
        still unwritten, give back what the hold has left."""
        last, self._unwritten = Amounts(*self._unwritten), Amounts().values()  # type: ignore[arg-type]
        try:
            if self._opening is not None:
                await asyncio.shield(self._opening)
                self._opening = None
            await asyncio.shield(self._flushed())
        finally:
            if self._writer is not None:
                self._writes.put_nowait(None)
                self._writer = None
            reservation, self.reservation = self.reservation, None
            if reservation is not None:
                try:
                    await asyncio.shield(settle(self.db, reservation, last))
                except Conflict:  # the hold expired meanwhile: spend the usage all the same
                    await asyncio.shield(consume(self.db, reservation, last))
            elif any(last.values()):
                await asyncio.shield(self._spend_in_ledger(last))

    def held(self) -> dict[str, int | Decimal]:
        """What the hold has left, undrawn (for reports and tests)."""
        return dict(zip(DIMENSIONS, self._room, strict=True))
