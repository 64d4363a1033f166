"""Who is calling: the tenant and scopes a verified credential (API key or session token) carries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PLATFORM_ADMIN = "platform:admin"
ADMIN = "admin"
SCOPES = (
    "memory:read", "memory:write", "agent:run", "session:mint", "audit:read",
    "market:read", "market:write", "ledger:read", ADMIN, PLATFORM_ADMIN,
)
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_scope(scope: str) -> str:
    """The scope if it is known; ValueError naming it otherwise."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    return scope


def grants(held: frozenset[str] | set[str] | list[str], scope: str) -> bool:
    """platform:admin grants everything; admin grants every tenant scope; else exact match."""
    return scope in held or PLATFORM_ADMIN in held or (ADMIN in held and scope != PLATFORM_ADMIN)


@dataclass(frozen=True)
class Principal:
    """A verified caller: `actor` is 'key:<id>' or 'token:<jti>'; `claims` only for tokens;
    `limits` are the tenant's (rate limits)."""

    tenant_id: str
    actor: str
    kind: str
    scopes: frozenset[str]
    claims: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)

    def has(self, scope: str) -> bool:
        return grants(self.scopes, scope)

    @property
    def is_platform_admin(self) -> bool:
        return PLATFORM_ADMIN in self.scopes

    def policy_subject(self) -> dict[str, Any]:
        """The subject as the policy sees it."""
        return {"tenant": self.tenant_id, "actor": self.actor, "kind": self.kind,
                "scopes": sorted(self.scopes), "allow": self.claims.get("allow"),
                "budgets": self.claims.get("budgets")}
