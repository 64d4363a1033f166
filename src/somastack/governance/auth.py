"""Authentication and admission of every /v1 request: credential → principal → scope → rate limit.

Each refusal is audited before it is raised, with the reason the caller is told.
"""

from __future__ import annotations

import hashlib
import time

from somastack.errors import Forbidden, RateLimited, SomaError, Unauthenticated
from somastack.governance import audit, keys, ratelimit, tokens
from somastack.governance.principal import Principal
from somastack.governance.runtime import Governance
from somastack.store import Database

audit.watch(keys.VERIFIED.on_change)


async def refuse(db: Database, error: SomaError, *, actor: str, tenant_id: str | None, action: str,
                 resource: str, trace_id: str | None) -> SomaError:
    """Audit a refusal and hand the error back for raising."""
    await audit.record(db, audit.AuditEvent(
        actor=actor, tenant_id=tenant_id, action=action, resource=resource, decision="deny",
        reasons=[error.detail], trace_id=trace_id))
    return error


async def authenticate(db: Database, gov: Governance, authorization: str | None) -> Principal:
    """The principal of `Authorization: Bearer <API key | session token>`; Unauthenticated if none."""
    if not authorization:
        raise Unauthenticated("an API key or session token is required: Authorization: Bearer …",
                              field="Authorization")
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated("use the Bearer scheme: Authorization: Bearer <key or token>",
                              field="Authorization")
    if keys.looks_like_key(credential):
        return await api_key_principal(db, credential)
    return await session_principal(db, gov, credential)


async def session_principal(db: Database, gov: Governance, token: str) -> Principal:
    """The session token's principal: remembered like an API key's (keys.VERIFIED, by the
    token's hash; dropped when the token is revoked or its tenant changes, see VerifiedKeys),
    with its expiry and constitution checked again on every use; else verified and read."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    cache_id = f"jwt:{digest}"
    known = keys.VERIFIED.get(cache_id, digest)
    if known is not None:
        if (known.claims.get("exp", 0) > time.time()
                and known.claims.get("cst") == gov.constitution.checksum):
            return known
        keys.VERIFIED.drop(cache_id)  # expired, or minted under another constitution: say so
    audit.listen(db)
    epoch = keys.VERIFIED.epoch
    async with db.pool.connection() as conn:  # reads only: no transaction, one round trip
        who = await tokens.authenticate(
            conn, token, issuer=gov.settings.jwt_issuer,
            constitution_checksum=gov.constitution.checksum,
            max_ttl_s=gov.settings.session_ttl_max_s, keys=gov.jwt_keys)
    keys.VERIFIED.put(cache_id, digest, who, epoch)
    return who


async def api_key_principal(db: Database, credential: str) -> Principal:
    """The key's principal: remembered for a few seconds (keys.VerifiedKeys), else read."""
    key_id, secret_hash = keys.parse(credential)
    known = keys.VERIFIED.get(key_id, secret_hash)
    if known is not None:
        return known
    audit.listen(db)
    epoch = keys.VERIFIED.epoch
    async with db.system() as conn:
        who = await keys.authenticate(conn, credential)
    keys.VERIFIED.put(key_id, secret_hash, who, epoch)
    return who


def check_scopes(principal: Principal, required: list[str]) -> None:
    missing = [s for s in required if not principal.has(s)]
    if missing:
        raise Forbidden(f"this credential lacks the scope {', '.join(missing)}", field="Authorization")


def check_tenant_header(principal: Principal, asserted: str | None) -> None:
    """X-Soma-Tenant is only an assertion: it must name the credential's own tenant."""
    if asserted is not None and asserted != principal.tenant_id:
        raise Forbidden(f"the credential belongs to another tenant than {asserted!r}",
                        field="X-Soma-Tenant")


async def check_rate(gov: Governance, principal: Principal, route: str) -> None:
    limit = ratelimit.limit_for(principal.limits, route, gov.default_limit)
    wait = await gov.limiter.hit(f"{principal.tenant_id}|{route}", limit)
    if wait is not None:
        raise RateLimited(f"more than {limit.limit} requests to {route} in {limit.window_s} s",
                          retry_after_s=wait)
