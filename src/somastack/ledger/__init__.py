"""Usage ledger and budgets: reserve before a step, settle after it, priced by the price table."""

from somastack.ledger.budgets import (
    budget,
    charge,
    expire_reservations,
    refund,
    release,
    reserve,
    set_budget,
    settle,
    write_budget,
)
from somastack.ledger.pricing import PriceTable
from somastack.ledger.report import usage_report
from somastack.ledger.usage import Amounts, BudgetState, Limits, Reservation, Scope

__all__ = [
    "Amounts", "BudgetState", "Limits", "PriceTable", "Reservation", "Scope", "budget", "charge",
    "expire_reservations", "refund", "release", "reserve", "set_budget", "settle", "usage_report",
    "write_budget",
]
