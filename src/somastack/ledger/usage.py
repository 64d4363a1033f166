"""The metered quantities, the scope they are charged to, and open reservations."""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from uuid import UUID

from somastack.errors import InvalidInput

DIMENSIONS = ("tokens", "tool_calls", "storage_bytes", "egress_bytes", "cost_cents")


@dataclass(frozen=True)
class Amounts:
    """Quantities of every metered dimension (usage, a reservation, or spent/reserved totals)."""

    tokens: int = 0
    tool_calls: int = 0
    storage_bytes: int = 0
    egress_bytes: int = 0
    cost_cents: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise InvalidInput("must not be negative", field=f.name)
        object.__setattr__(self, "cost_cents", Decimal(self.cost_cents))

    def values(self) -> tuple[int | Decimal, ...]:
        return tuple(getattr(self, d) for d in DIMENSIONS)


@dataclass(frozen=True)
class Limits:
    """A budget's caps per dimension; None is unlimited."""

    tokens: int | None = None
    tool_calls: int | None = None
    storage_bytes: int | None = None
    egress_bytes: int | None = None
    cost_cents: Decimal | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 0:
                raise InvalidInput("must not be negative", field=f.name)

    def values(self) -> tuple[int | Decimal | None, ...]:
        return tuple(getattr(self, d) for d in DIMENSIONS)


@dataclass(frozen=True)
class Scope:
    """Who is charged: a tenant, and within it an agent and a session (empty when none)."""

    tenant: str
    agent: str = ""
    session: str = ""

    def budget_scopes(self) -> list[str]:
        """The budget rows this charge counts against, in lock order."""
        scopes = ["tenant"]
        if self.agent:
            scopes.append(f"agent:{self.agent}")
        if self.session:
            scopes.append(f"session:{self.session}")
        return sorted(scopes)


@dataclass(frozen=True)
class Reservation:
    """Amounts held against the scope's budgets until settled or released."""

    id: UUID
    scope: Scope
    amounts: Amounts


@dataclass(frozen=True)
class BudgetState:
    scope: str
    limits: Limits
    spent: Amounts
    reserved: Amounts

    def remaining(self) -> dict[str, int | Decimal | None]:
        """What can still be reserved per dimension (None where unlimited)."""
        return {d: None if lim is None else max(lim - spent - held, 0)
                for d, lim, spent, held in zip(DIMENSIONS, self.limits.values(), self.spent.values(),
                                               self.reserved.values(), strict=True)}
