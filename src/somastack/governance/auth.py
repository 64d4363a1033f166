"""Authentication and admission of every /v1 request: credential → principal → scope → rate limit.

Each refusal is audited before it is raised, with the reason the caller is told.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from somastack.errors import Forbidden, RateLimited, SomaError, Unauthenticated
from somastack.governance import audit, keys, ratelimit, tokens
from somastack.governance.principal import Principal
from somastack.governance.runtime import Governance
from somastack.store import Database

log = logging.getLogger("somastack.auth")
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

    async def read() -> Principal:
        async with db.pool.connection() as conn:  # reads only: no transaction, one round trip
            return await tokens.authenticate(
                conn, token, issuer=gov.settings.jwt_issuer,
                constitution_checksum=gov.constitution.checksum,
                max_ttl_s=gov.settings.session_ttl_max_s, keys=gov.jwt_keys)

    known = keys.VERIFIED.get(cache_id, digest)
    if known is not None:
        if (known.claims.get("exp", 0) > time.time()
                and known.claims.get("cst") == gov.constitution.checksum):
            if keys.VERIFIED.due(cache_id):
                in_background(_refresh(cache_id, read, digest))
            return known
        keys.VERIFIED.drop(cache_id)  # expired, or minted under another constitution: say so
    audit.listen(db)
    epoch = keys.VERIFIED.epoch
    who = await read()
    keys.VERIFIED.put(cache_id, digest, who, epoch)
    return who


_BACKGROUND: set[asyncio.Future[Any]] = set()


def in_background(work: Awaitable[Any]) -> None:
    """Run `work` off the request's path (a reference is kept until it ends)."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _refresh(cache_id: str, read: Callable[[], Awaitable[Principal]],
                   secret_hash: str) -> None:
    """Read a remembered credential again; a refusal drops it, so the next request reads it
    itself and is refused (and audited) there."""
    epoch = keys.VERIFIED.epoch
    try:
        keys.VERIFIED.put(cache_id, secret_hash, await read(), epoch)
    except SomaError:
        keys.VERIFIED.drop(cache_id)
    except Exception:  # the database is unreachable: the entry expires as it would have
        log.warning("refreshing a verified credential failed", exc_info=True)
    finally:
        keys.VERIFIED.refreshed(cache_id)


async def api_key_principal(db: Database, credential: str) -> Principal:
    """The key's principal: remembered for a few seconds (keys.VerifiedKeys), else read."""
    key_id, secret_hash = keys.parse(credential)

    async def read() -> Principal:
        async with db.system() as conn:
            return await keys.authenticate(conn, credential)

    known = keys.VERIFIED.get(key_id, secret_hash)
    if known is not None:
        if keys.VERIFIED.due(key_id):
            in_background(_refresh(key_id, read, secret_hash))
        return known
    audit.listen(db)
    epoch = keys.VERIFIED.epoch
    who = await read()
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
