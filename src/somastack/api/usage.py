"""/v1/usage: the tenant's settled usage over a time range, grouped (admin or `ledger:read`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from somastack.api.deps import State, scoped
from somastack.api.when import When
from somastack.governance.principal import Principal
from somastack.ledger import usage_report
from somastack.ledger.report import GROUPS

router = APIRouter(prefix="/v1/usage", tags=["ledger"])
Reader = Annotated[Principal, scoped("ledger:read")]


class UsageOut(BaseModel):
    rows: list[dict[str, Any]] = Field(description="the group keys, then tokens, tool_calls, "
                                                    "storage_bytes, egress_bytes and cost_cents "
                                                    "(a decimal string, exact)")
    start: datetime | None = Field(alias="from")
    end: datetime | None = Field(alias="to")
    group_by: list[str]


@router.get("", response_model=UsageOut)
async def usage(
    s: State, who: Reader,
    start: Annotated[When | None, Query(alias="from", description="ISO time (inclusive); "
                                            "naive times are UTC; default: the beginning")] = None,
    end: Annotated[When | None, Query(alias="to", description="ISO time (exclusive); "
                                          "default: now and after")] = None,
    group_by: Annotated[str, Query(max_length=100, description="comma-separated, any of: "
                                   f"{', '.join(GROUPS)}; none: one total row")] = "",
) -> Any:
    """Tokens, tool calls, storage, egress and cost (cents) summed per group in [from, to)."""
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    rows = await usage_report(s.db, who.tenant_id, start=start, end=end, group_by=groups)
    return {"rows": rows, "from": start, "to": end, "group_by": list(dict.fromkeys(groups))}
