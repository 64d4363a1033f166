"""Pydantic contracts of the governance API (tenants, keys, sessions, constitution, policy, audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from somastack.api.when import When
from somastack.governance.principal import SCOPES, TENANT_ID_RE, check_scope
from somastack.governance.ratelimit import check_limits

Hash = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9:_-]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantIn(Strict):
    id: str = Field(pattern=TENANT_ID_RE.pattern, description="1-64 of letters, digits, _ . -")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    plan: str = Field(default="free", min_length=1, max_length=64)
    limits: dict[str, Any] = Field(default_factory=dict)
    billing_profile: dict[str, Any] = Field(default_factory=dict)
    residency: str | None = Field(default=None, max_length=64)

    @field_validator("limits")
    @classmethod
    def _rate(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_limits(v)
        return v


class TenantOut(BaseModel):
    id: str
    name: str
    plan: str
    limits: dict[str, Any]
    billing_profile: dict[str, Any]
    residency: str | None
    disabled_at: datetime | None
    created_at: datetime


class KeyIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Annotated[str, AfterValidator(check_scope)]] = Field(
        min_length=1, max_length=len(SCOPES), description=f"any of: {', '.join(SCOPES)}")

    @field_validator("scopes")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))  # in order, each once


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    scopes: list[str]
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret; shown once, store it now")


class Budgets(Strict):
    tokens: int = Field(ge=0)
    tools_per_min: int = Field(ge=0)
    cost_cents: int | None = Field(default=None, ge=0)


class Allow(Strict):
    tools: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default_factory=list,
                                                                              max_length=256)
    capsules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default_factory=list,
                                                                                 max_length=256)
    memory: Literal["none", "read", "readwrite"] = "none"


class MintIn(Strict):
    tenant: str | None = Field(default=None, description="must be the credential's own tenant")
    persona_hash: Hash = Field(description="the hash of one of your tenant's personas")
    policy_hash: Hash
    budgets: Budgets
    allow: Allow = Field(default_factory=Allow)
    ttl_s: int = Field(ge=1, description="lifetime; at most the constitution's session_ttl_max_s")


class MintOut(BaseModel):
    jwt: str
    expires_in: int
    jti: str
    kid: str
    session_id: str = Field(description="the session's id (= jti); its ledger budget is "
                                        "`session:<session_id>`")


class RevokeIn(Strict):
    jti: str = Field(min_length=1, max_length=64)


class Signature(Strict):
    signer: str = Field(min_length=1, max_length=100)
    signature: str = Field(min_length=1, max_length=200)


class ConstitutionIn(Strict):
    document: dict[str, Any]
    checksum: str | None = None
    signatures: list[Signature] = Field(default_factory=list, max_length=100)


class PolicyIn(Strict):
    module: str = Field(min_length=1, description="Rego, package soma.tenant; its `deny` set adds denials")


class PolicyCheckIn(Strict):
    action: str = Field(min_length=1, max_length=100, pattern=r"^[a-z]+\.[a-z_.]+$")
    resource: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)


class PolicyTestIn(Strict):
    modules: dict[str, str] = Field(default_factory=dict, description="file name → Rego source")


class ReplayIn(Strict):
    dead_only: bool = True
    since: When | None = None
    ids: list[str] | None = Field(default=None, max_length=10_000)
