"""Session tokens (/v1/session/*), signing-key rotation and the public JWKS."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Request

from somastack.agent import personas
from somastack.api.deps import State, scoped, trace_id
from somastack.api.governance_schemas import MintIn, MintOut, RevokeIn
from somastack.errors import Forbidden, NotFound
from somastack.governance import audit, keys, signing, tokens
from somastack.governance.auth import refuse
from somastack.governance.principal import ADMIN, PLATFORM_ADMIN, Principal
from somastack.ledger import Limits, write_budget

router = APIRouter(tags=["auth"])
Minter = Annotated[Principal, scoped("session:mint")]


@router.post("/v1/session/mint", response_model=MintOut)
async def mint(body: MintIn, request: Request, s: State, who: Minter) -> Any:
    """Mint an EdDSA session token for one of your tenant's personas, within the constitution's
    ceilings; its token and cost budgets become the ledger budget `session:<session_id>`."""
    gov, trace = s.governance, trace_id(request)
    if body.tenant is not None and body.tenant != who.tenant_id:
        raise await refuse(s.db, Forbidden(f"a credential of tenant {who.tenant_id!r} cannot mint for "
                                           f"{body.tenant!r}", field="tenant"),
                           actor=who.actor, tenant_id=who.tenant_id, action="session.mint",
                           resource=f"tenant:{body.tenant}", trace_id=trace)
    req = tokens.MintRequest(
        persona_hash=body.persona_hash, policy_hash=body.policy_hash, ttl_s=body.ttl_s,
        budgets=body.budgets.model_dump(exclude_none=True), tools=body.allow.tools,
        capsules=body.allow.capsules, memory=body.allow.memory)
    try:  # the token, its session budget and the audit row commit together or not at all
        async with s.db.system() as conn:
            if not personas.HASH_RE.fullmatch(body.persona_hash) \
                    or await personas.find_persona(conn, who.tenant_id, body.persona_hash) is None:
                raise NotFound("not the hash of one of your tenant's personas (POST /v1/personas)",
                               field="persona_hash")
            out = await tokens.mint(conn, who, req, gov.constitution, issuer=gov.settings.jwt_issuer,
                                    ttl_max_s=gov.settings.session_ttl_max_s)
            await write_budget(conn, who.tenant_id, f"session:{out['jti']}", _session_limits(body))
            await _audit_mint(conn, who, out["jti"], trace, body)
    except (Forbidden, NotFound) as exc:
        raise await refuse(s.db, exc, actor=who.actor, tenant_id=who.tenant_id, action="session.mint",
                           resource=f"tenant:{who.tenant_id}", trace_id=trace) from None
    return {**out, "session_id": out["jti"]}


def _session_limits(body: MintIn) -> Limits:
    """The ledger budget of the session (tools_per_min is a rate: it stays in the claims)."""
    cents = body.budgets.cost_cents
    return Limits(tokens=body.budgets.tokens, cost_cents=None if cents is None else Decimal(cents))


async def _audit_mint(conn: psycopg.AsyncConnection, who: Principal, jti: str, trace: str,
                      body: MintIn) -> None:
    await audit.append(conn, audit.AuditEvent(
        actor=who.actor, tenant_id=who.tenant_id, action="session.mint", resource=f"token:{jti}",
        decision="allow", trace_id=trace, payload=body.model_dump(mode="json")))


@router.post("/v1/session/revoke")
async def revoke(body: RevokeIn, request: Request, s: State, who: Minter) -> Any:
    """Revoke one of your tenant's session tokens by jti; it stops working on the next request."""
    async with s.db.system() as conn:
        row = await tokens.revoke(conn, who.tenant_id, body.jti)
        await audit.append(conn, audit.AuditEvent(
            actor=who.actor, tenant_id=who.tenant_id, action="session.revoke",
            resource=f"token:{body.jti}", decision="allow", trace_id=trace_id(request)))
    keys.VERIFIED.forget(actor=f"token:{body.jti}")  # at once here; other processes are told
    return row


@router.get("/.well-known/jwks.json")
async def jwks(s: State) -> Any:
    """Public keys that verify live session tokens (RFC 7517 / 8037)."""
    async with s.db.system() as conn:
        rows = await signing.verifying(conn, s.governance.settings.session_ttl_max_s)
    return {"keys": [signing.jwk(r) for r in rows]}


@router.get("/v1/signing-keys")
async def list_signing_keys(s: State, who: Annotated[Principal, scoped(ADMIN)]) -> Any:
    async with s.db.system() as conn:
        return await signing.list_all(conn)


@router.post("/v1/signing-keys/rotate")
async def rotate_signing_key(request: Request, s: State,
                             who: Annotated[Principal, scoped(PLATFORM_ADMIN)]) -> Any:
    """New tokens are signed by a new key; tokens of the old one stay valid until they expire."""
    async with s.db.system() as conn:
        out = await signing.rotate(conn)
        await audit.append(conn, audit.AuditEvent(
            actor=who.actor, tenant_id=who.tenant_id, action="signing_key.rotate",
            resource=f"signing_key:{out['kid']}", decision="allow", trace_id=trace_id(request),
            payload=out))
    return out
