"""The budget hook backed by the usage ledger: a tool call reserves its worst case, then settles.

Worst case = one call + the tool's own cost + its max egress and storage, priced by the table;
settled = one call + the tool's cost + the egress and storage it really used.
"""

from __future__ import annotations

from somastack.agent.tools.registry import ToolContext, ToolDef, ToolOutput
from somastack.ledger import PriceTable, Reservation, Scope, release, reserve, settle
from somastack.store import Database


class LedgerBudget:
    """BudgetHook over `somastack.ledger` budgets (tenant, agent and session scopes)."""

    def __init__(self, db: Database, prices: PriceTable) -> None:
        self.db = db
        self.prices = prices

    async def reserve(self, ctx: ToolContext, tool: ToolDef) -> Reservation:
        worst = self.prices.charge(tool_calls=1, egress_bytes=tool.max_egress_bytes,
                                   storage_bytes=tool.max_storage_bytes, extra_cents=tool.cost_cents)
        return await reserve(self.db, Scope(ctx.tenant, ctx.agent, ctx.session), worst)

    async def settle(self, hold: Reservation, tool: ToolDef, output: ToolOutput | None) -> None:
        used = self.prices.charge(tool_calls=1, extra_cents=tool.cost_cents,
                                  egress_bytes=output.egress_bytes if output else 0,
                                  storage_bytes=output.storage_bytes if output else 0)
        await settle(self.db, hold, used)

    async def release(self, hold: Reservation) -> None:
        await release(self.db, hold)
