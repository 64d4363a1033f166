"""/v1/tenants and /v1/keys: tenants (platform admin) and API keys (tenant admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from somastack.api.deps import State, scoped, trace_id
from somastack.api.governance_schemas import KeyCreated, KeyIn, KeyOut, TenantIn, TenantOut
from somastack.errors import Forbidden, NotFound
from somastack.governance import audit, keys, tenants
from somastack.governance.principal import ADMIN, PLATFORM_ADMIN, TENANT_ID_RE, Principal

router = APIRouter(prefix="/v1", tags=["governance"])
PlatformAdmin = Annotated[Principal, scoped(PLATFORM_ADMIN)]
TenantAdmin = Annotated[Principal, scoped(ADMIN)]
TenantId = Annotated[str, Path(pattern=TENANT_ID_RE.pattern)]


def _event(who: Principal, request: Request, action: str, resource: str, tenant_id: str | None,
           payload: dict[str, Any]) -> audit.AuditEvent:
    return audit.AuditEvent(actor=who.actor, tenant_id=tenant_id, action=action, resource=resource,
                            decision="allow", trace_id=trace_id(request), payload=payload)


@router.post("/tenants", response_model=TenantOut, status_code=201)
async def create_tenant(body: TenantIn, request: Request, s: State, who: PlatformAdmin) -> Any:
    """Create a tenant (platform admin)."""
    spec = tenants.TenantSpec(id=body.id, name=body.name or body.id, plan=body.plan,
                              limits=body.limits, billing_profile=body.billing_profile,
                              residency=body.residency)
    async with s.db.system() as conn:
        row = await tenants.create(conn, spec)
        await audit.append(conn, _event(who, request, "tenant.create", f"tenant:{body.id}", body.id,
                                        body.model_dump(mode="json")))
    return row


@router.get("/tenants", response_model=list[TenantOut])
async def list_tenants(s: State, who: PlatformAdmin) -> Any:
    async with s.db.system() as conn:
        return await tenants.list_all(conn)


@router.get("/tenants/{tenant_id}", response_model=TenantOut)
async def get_tenant(tenant_id: TenantId, s: State, who: TenantAdmin) -> Any:
    """One tenant: your own, or any for a platform admin."""
    if tenant_id != who.tenant_id and not who.is_platform_admin:
        raise NotFound(f"tenant {tenant_id!r} not found", field="tenant_id")
    async with s.db.system() as conn:
        return await tenants.get(conn, tenant_id)


@router.post("/tenants/{tenant_id}/disable", response_model=TenantOut)
async def disable_tenant(tenant_id: TenantId, request: Request, s: State, who: PlatformAdmin) -> Any:
    """Disable a tenant: every key and token of it stops working at once."""
    return await _set_disabled(tenant_id, True, request, s, who)


@router.post("/tenants/{tenant_id}/enable", response_model=TenantOut)
async def enable_tenant(tenant_id: TenantId, request: Request, s: State, who: PlatformAdmin) -> Any:
    return await _set_disabled(tenant_id, False, request, s, who)


async def _set_disabled(tenant_id: str, disabled: bool, request: Request, s: State, who: Principal
                        ) -> Any:
    if disabled and tenant_id == who.tenant_id:
        raise Forbidden("a platform admin cannot disable its own tenant", field="tenant_id")
    async with s.db.system() as conn:
        row = await tenants.set_disabled(conn, tenant_id, disabled)
        await audit.append(conn, _event(who, request, "tenant.disable" if disabled else "tenant.enable",
                                        f"tenant:{tenant_id}", tenant_id, {}))
    keys.VERIFIED.forget(tenant_id=tenant_id)  # at once here; other processes are told
    return row


async def _create_key(tenant_id: str, body: KeyIn, request: Request, s: State, who: Principal
                      ) -> dict[str, Any]:
    async with s.db.system() as conn:
        await tenants.get(conn, tenant_id)
        row, plaintext = await keys.create(conn, tenant_id=tenant_id, name=body.name,
                                           scopes=body.scopes, created_by=who.actor)
        await audit.append(conn, _event(who, request, "key.create", f"key:{row['id']}", tenant_id,
                                        {"name": body.name, "scopes": body.scopes}))
    return {**row, "key": plaintext}


@router.post("/tenants/{tenant_id}/keys", response_model=KeyCreated, status_code=201)
async def create_tenant_key(tenant_id: TenantId, body: KeyIn, request: Request, s: State,
                            who: PlatformAdmin) -> Any:
    """Create a key for any tenant (platform admin); platform:admin itself is never granted here."""
    if PLATFORM_ADMIN in body.scopes:
        raise Forbidden("platform:admin can only be granted to your own tenant's keys",
                        field=f"scopes[{body.scopes.index(PLATFORM_ADMIN)}]")
    return await _create_key(tenant_id, body, request, s, who)


@router.post("/keys", response_model=KeyCreated, status_code=201)
async def create_key(body: KeyIn, request: Request, s: State, who: TenantAdmin) -> Any:
    """Create a key for your own tenant; the secret is in the answer and nowhere else."""
    if PLATFORM_ADMIN in body.scopes and not who.is_platform_admin:
        raise Forbidden("only a platform admin can grant platform:admin",
                        field=f"scopes[{body.scopes.index(PLATFORM_ADMIN)}]")
    return await _create_key(who.tenant_id, body, request, s, who)


@router.get("/keys", response_model=list[KeyOut])
async def list_keys(s: State, who: TenantAdmin) -> Any:
    """Your tenant's keys (never their secrets)."""
    async with s.db.system() as conn:
        return await keys.list_for(conn, who.tenant_id)


@router.delete("/keys/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: Annotated[str, Path(max_length=64)], request: Request, s: State,
                     who: TenantAdmin) -> Any:
    """Revoke one of your tenant's keys; it stops working on the next request."""
    async with s.db.system() as conn:
        row = await keys.revoke(conn, who.tenant_id, key_id)
        await audit.append(conn, _event(who, request, "key.revoke", f"key:{key_id}", who.tenant_id, {}))
    return row
