"""The budget hook backed by the usage ledger: a tool call reserves its worst case, then settles.

Worst case = one call + the tool's own cost + its max egress and storage, priced by the table;
settled = one call + the tool's cost + the egress and storage it really used.
"""

from __future__ import annotations

from somastack.agent.tools.registry import ToolContext, ToolDef, ToolOutput
from somastack.ledger import PriceTable, Scope
from somastack.ledger.hold import Account, Direct
from somastack.store import Database


class LedgerBudget:
    """BudgetHook over `somastack.ledger` budgets (tenant, agent and session scopes): each call
    reserves and settles in the ledger, or draws on `account` (an agent turn's hold)."""

    def __init__(self, db: Database, prices: PriceTable, account: Account | None = None) -> None:
        self.db = db
        self.prices = prices
        self.account = account

    def _account(self, ctx: ToolContext) -> Account:
        return self.account or Direct(self.db, Scope(ctx.tenant, ctx.agent, ctx.session))

    async def reserve(self, ctx: ToolContext, tool: ToolDef) -> tuple[Account, object]:
        worst = self.prices.charge(tool_calls=1, egress_bytes=tool.max_egress_bytes,
                                   storage_bytes=tool.max_storage_bytes, extra_cents=tool.cost_cents)
        account = self._account(ctx)
        return account, await account.take(worst)

    async def settle(self, hold: tuple[Account, object], tool: ToolDef,
                     output: ToolOutput | None) -> None:
        used = self.prices.charge(tool_calls=1, extra_cents=tool.cost_cents,
                                  egress_bytes=output.egress_bytes if output else 0,
                                  storage_bytes=output.storage_bytes if output else 0)
        account, draw = hold
        await account.spend(draw, used)

    async def release(self, hold: tuple[Account, object]) -> None:
        account, draw = hold
        await account.give_back(draw)
