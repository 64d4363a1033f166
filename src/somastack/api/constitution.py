"""/v1/constitution and /v1/policy: the signed rules, and the tenant's policy override."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response

from somastack.api.deps import Authenticated, State, scoped, trace_id
from somastack.api.governance_schemas import ConstitutionIn, PolicyCheckIn, PolicyIn
from somastack.errors import InvalidInput, NotFound
from somastack.governance import audit, constitution, policy
from somastack.governance.principal import ADMIN, PLATFORM_ADMIN, Principal

router = APIRouter(prefix="/v1", tags=["constitution", "policy"])
TenantAdmin = Annotated[Principal, scoped(ADMIN)]


@router.get("/constitution")
async def get_constitution(s: State, who: Authenticated) -> Any:
    """The active, verified constitution."""
    c = s.governance.constitution
    return {"version": c.version, "document": c.document, "checksum": c.checksum,
            "signers": c.signers}


@router.get("/constitution/checksum")
async def get_checksum(s: State, who: Authenticated) -> Any:
    c = s.governance.constitution
    return {"version": c.version, "checksum": c.checksum, "algorithm": "SHA3-512"}


@router.post("/constitution/validate")
async def validate_constitution(body: ConstitutionIn, s: State, who: Authenticated) -> Any:
    """Check a signed document against the server's trusted signers; nothing is stored."""
    document = constitution.parse_document(body.document)
    result = constitution.verify(document, [x.model_dump() for x in body.signatures],
                                 s.governance.trust, stated_checksum=body.checksum)
    return {"valid": result.ok, "checksum": result.checksum, "valid_signers": result.valid_signers,
            "threshold": result.threshold, "problems": result.problems}


@router.post("/constitution", status_code=201)
async def load_constitution(body: ConstitutionIn, request: Request, s: State,
                            who: Annotated[Principal, scoped(PLATFORM_ADMIN)]) -> Any:
    """Activate a new version; it needs t valid signatures and a higher version number."""
    envelope = {"document": body.document, "signatures": [x.model_dump() for x in body.signatures]}
    async with s.db.system() as conn:
        stored = await constitution.store(conn, envelope, s.governance.trust, loaded_by=who.actor)
        await audit.append(conn, audit.AuditEvent(
            actor=who.actor, tenant_id=who.tenant_id, action="constitution.load",
            resource=f"constitution:v{stored.version}", decision="allow",
            reasons=[f"signed by {', '.join(stored.signers)}"], trace_id=trace_id(request),
            payload={"checksum": stored.checksum}))
    s.governance.constitution = stored
    return {"version": stored.version, "checksum": stored.checksum, "signers": stored.signers}


@router.get("/policy")
async def get_policy(s: State, who: TenantAdmin) -> Any:
    """The shipped modules' names and your tenant's override (if any)."""
    async with s.db.system() as conn:
        override = await policy.get_override(conn, who.tenant_id)
    return {"base": sorted(policy.base_modules()), "override": override}


@router.put("/policy")
async def set_policy(body: PolicyIn, request: Request, s: State, who: TenantAdmin) -> Any:
    """Store your tenant's override (package soma.tenant); it can only add denials."""
    try:
        await policy.check_override(s.governance.rego, body.module)
    except ValueError as exc:
        raise InvalidInput(str(exc)[:2000], field="module") from exc
    async with s.db.system() as conn:
        row = await policy.set_override(conn, who.tenant_id, body.module, who.actor)
        await audit.append(conn, audit.AuditEvent(
            actor=who.actor, tenant_id=who.tenant_id, action="policy.set",
            resource=f"policy:{who.tenant_id}", decision="allow", trace_id=trace_id(request),
            payload={"checksum": row["checksum"]}))
    policy.OVERRIDES.forget(who.tenant_id)  # at once here; other processes are told
    return row


@router.delete("/policy", status_code=204)
async def clear_policy(request: Request, s: State, who: TenantAdmin) -> Response:
    async with s.db.system() as conn:
        if not await policy.clear_override(conn, who.tenant_id):
            raise NotFound("this tenant has no policy override", field="policy")
        await audit.append(conn, audit.AuditEvent(
            actor=who.actor, tenant_id=who.tenant_id, action="policy.clear",
            resource=f"policy:{who.tenant_id}", decision="allow", trace_id=trace_id(request)))
    policy.OVERRIDES.forget(who.tenant_id)  # at once here; other processes are told
    return Response(status_code=204)


@router.post("/policy/check")
async def check_policy(body: PolicyCheckIn, request: Request, s: State, who: Authenticated) -> Any:
    """Ask the decision point about an action as yourself (the decision is audited)."""
    gov = s.governance
    decision = await policy.authorize(s.db, gov.rego, gov.constitution, policy.Request(
        subject=who, action=body.action, resource=body.resource, context=body.context,
        trace_id=trace_id(request)))
    return {"allow": decision.allow, "reasons": decision.reasons, "error": decision.error}
