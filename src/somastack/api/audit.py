"""/v1/audit (the chain, filtered and verified) and /v1/outbox (relay status and replay)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request

from somastack.api.deps import State, scoped, trace_id
from somastack.api.governance_schemas import ReplayIn
from somastack.api.when import When
from somastack.errors import Forbidden, InvalidInput
from somastack.governance import audit
from somastack.governance.principal import PLATFORM_ADMIN, TENANT_ID_RE, Principal
from somastack.store import outbox

router = APIRouter(prefix="/v1", tags=["audit"])
PlatformAdmin = Annotated[Principal, scoped(PLATFORM_ADMIN)]


@router.get("/audit")
async def list_audit(
    s: State, who: Annotated[Principal, scoped("audit:read")],
    tenant: Annotated[str | None, Query(pattern=TENANT_ID_RE.pattern)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    decision: Literal["allow", "deny", "error", "info"] | None = None,
    since: When | None = None, until: When | None = None,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Audit rows of your tenant (a platform admin: of any tenant, or all), oldest first."""
    if who.is_platform_admin:
        scope = tenant  # None: every tenant's rows and the platform's own
    elif tenant not in (None, who.tenant_id):
        raise Forbidden("you can only read your own tenant's audit rows", field="tenant")
    else:
        scope = who.tenant_id
    rows = await audit.query(s.db, tenant_id=scope, action=action, actor=actor, decision=decision,
                             since=since, until=until, after_seq=after_seq, limit=limit)
    return {"items": rows, "next_after_seq": rows[-1]["seq"] if len(rows) == limit else None}


@router.get("/audit/verify")
async def verify_audit(s: State, who: PlatformAdmin, anchor: str | None = None) -> Any:
    """Re-walk the whole chain; the answer names the first broken row and reports the head.
    `anchor` (`seq:hash`, a head reported earlier and kept elsewhere) also fails the check if
    that row is gone or changed: the newest rows cut off."""
    expected = audit.parse_anchor(anchor) if anchor is not None else None
    report = await asyncio.to_thread(audit.verify_database, s.db.url, expected)
    return asdict(report)


@router.get("/outbox/status")
async def outbox_status(s: State, who: PlatformAdmin) -> Any:
    async with s.db.system() as conn:
        return asdict(await outbox.status(conn))


@router.post("/outbox/replay")
async def outbox_replay(body: ReplayIn, request: Request, s: State, who: PlatformAdmin) -> Any:
    """Queue events again for the relay (consumers dedupe by event id)."""
    ids: list[UUID] | None = None
    if body.ids is not None:
        ids = []
        for i, given in enumerate(body.ids):
            try:
                ids.append(UUID(given))
            except ValueError:
                raise InvalidInput(f"{given!r} is not a UUID", field=f"ids[{i}]") from None
    async with s.db.system() as conn:
        n = await outbox.replay(conn, dead_only=body.dead_only, since=body.since, event_ids=ids)
        await audit.append(conn, audit.AuditEvent(
            actor=who.actor, tenant_id=who.tenant_id, action="outbox.replay", resource="outbox",
            decision="allow", trace_id=trace_id(request),
            payload={**body.model_dump(mode="json"), "requeued": n}))
    return {"requeued": n}
