"""Session tokens: EdDSA (Ed25519) JWTs with kid, jti, the constitution checksum, budgets and
allow-lists. Minted from an API key, never from another token; revocable by jti."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from somastack.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from somastack.governance import signing
from somastack.governance.constitution import Active
from somastack.governance.principal import Principal

ALGORITHM = "EdDSA"
MEMORY_SCOPES = {"none": [], "read": ["memory:read"], "readwrite": ["memory:read", "memory:write"]}
_REQUIRED = ["exp", "iat", "nbf", "jti", "iss", "sub", "ten", "cst", "scp"]


@dataclass
class MintRequest:
    persona_hash: str
    policy_hash: str
    ttl_s: int
    budgets: dict[str, int] = field(default_factory=dict)
    tools: list[str] = field(default_factory=list)
    capsules: list[str] = field(default_factory=list)
    memory: str = "none"


def _check_against_constitution(req: MintRequest, constitution: Active, ttl_max_s: int) -> None:
    rules = constitution.document["rules"]
    limit = min(rules["session_ttl_max_s"], ttl_max_s)
    if req.ttl_s > limit:
        raise InvalidInput(f"{req.ttl_s} s exceeds the {limit} s maximum", field="ttl_s")
    for name, value in req.budgets.items():
        ceiling = rules["budget_ceilings"].get(name)
        if ceiling is not None and value > ceiling:
            raise InvalidInput(f"{value} exceeds the constitution's ceiling of {ceiling}",
                               field=f"budgets.{name}")
    allowed = rules["allowed_tools"]
    if "*" not in allowed:
        for i, tool in enumerate(req.tools):
            if tool not in allowed:
                raise InvalidInput(f"tool {tool!r} is not allowed by the constitution",
                                   field=f"allow.tools[{i}]")


def _token_scopes(principal: Principal, req: MintRequest) -> list[str]:
    """What the token may do: never more than the minting key."""
    wanted = ["agent:run", *MEMORY_SCOPES[req.memory]]
    for scope in MEMORY_SCOPES[req.memory]:
        if not principal.has(scope):
            raise Forbidden(f"memory={req.memory!r} needs the key to hold {scope!r}",
                            field="allow.memory")
    return [s for s in wanted if principal.has(s)]


async def mint(conn: psycopg.AsyncConnection, principal: Principal, req: MintRequest,
               constitution: Active, *, issuer: str, ttl_max_s: int) -> dict[str, Any]:
    """Sign and record a token for the principal's tenant; returns {jwt, expires_in, jti, kid}."""
    if principal.kind != "api_key":
        raise Forbidden("session tokens are minted with an API key, not with another token",
                        field="Authorization")
    _check_against_constitution(req, constitution, ttl_max_s)
    scopes = _token_scopes(principal, req)
    kid, key = await signing.active_private(conn)
    now = int(time.time())
    # Hex: a token id is a CLI argument (`soma token revoke JTI`), and a urlsafe one could
    # start with '-' and be read as an option (1 in 32).
    jti = secrets.token_hex(16)
    claims: dict[str, Any] = {
        "iss": issuer, "sub": principal.actor, "ten": principal.tenant_id, "jti": jti,
        "iat": now, "nbf": now, "exp": now + req.ttl_s, "cst": constitution.checksum,
        "persona_hash": req.persona_hash, "policy_hash": req.policy_hash,
        "budgets": req.budgets, "scp": scopes,
        "allow": {"tools": req.tools, "capsules": req.capsules, "memory": req.memory},
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
    await conn.execute(
        "INSERT INTO session_tokens (jti, tenant_id, kid, minted_by, claims, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (jti, principal.tenant_id, kid, principal.actor, Jsonb(claims),
         datetime.fromtimestamp(claims["exp"], UTC)))
    return {"jwt": token, "expires_in": req.ttl_s, "jti": jti, "kid": kid}


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthenticated("the session token is malformed", field="Authorization") from exc
    if header.get("alg") != ALGORITHM:
        raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted; "
                              f"only {ALGORITHM}", field="Authorization")
    if not isinstance(header.get("kid"), str):
        raise Unauthenticated("the session token has no kid", field="Authorization")
    return header


def decode(token: str, key: Ed25519PublicKey, issuer: str) -> dict[str, Any]:
    """The verified claims; Unauthenticated saying why a token is refused."""
    try:
        return jwt.decode(token, key, algorithms=[ALGORITHM], issuer=issuer,
                          options={"require": _REQUIRED})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("the session token has expired", field="Authorization") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthenticated("the session token's signature is not valid",
                              field="Authorization") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"the session token is not valid: {exc}", field="Authorization") from exc


async def authenticate(conn: psycopg.AsyncConnection, token: str, *, issuer: str,
                       constitution_checksum: str, max_ttl_s: int,
                       keys: dict[str, Ed25519PublicKey]) -> Principal:
    """Verify signature, expiry, kid, revocation, tenant and constitution of a session token.

    `keys` caches public keys by kid (they never change); unknown kids are looked up once.
    """
    kid = _header(token)["kid"]
    if kid not in keys:
        found = await signing.public_key(conn, kid, max_ttl_s)
        if found is None:
            raise Unauthenticated(f"unknown signing key id {kid!r}", field="Authorization")
        keys[kid] = found
    claims = decode(token, keys[kid], issuer)
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT s.tenant_id, s.kid, s.revoked_at, t.disabled_at, t.limits FROM session_tokens s "
        "JOIN tenants t ON t.id = s.tenant_id WHERE s.jti = %s", (claims["jti"],))
    row = await cur.fetchone()
    if row is None or row["tenant_id"] != claims["ten"] or row["kid"] != kid:
        raise Unauthenticated("the session token was not issued by this server", field="Authorization")
    if row["revoked_at"] is not None:
        raise Unauthenticated("the session token was revoked", field="Authorization")
    if row["disabled_at"] is not None:
        raise Unauthenticated(f"tenant {row['tenant_id']!r} is disabled", field="Authorization")
    if claims["cst"] != constitution_checksum:
        raise Unauthenticated("the session token was minted under another constitution",
                              field="Authorization")
    return Principal(tenant_id=claims["ten"], actor=f"token:{claims['jti']}", kind="session",
                     scopes=frozenset(claims["scp"]), claims=claims, limits=row["limits"])


async def revoke(conn: psycopg.AsyncConnection, tenant_id: str, jti: str) -> dict[str, Any]:
    """Revoke one of this tenant's tokens (idempotent); NotFound for another tenant's."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        "UPDATE session_tokens SET revoked_at = coalesce(revoked_at, now()) "
        "WHERE jti = %s AND tenant_id = %s RETURNING jti, tenant_id, expires_at, revoked_at",
        (jti, tenant_id))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"session token {jti!r} not found", field="jti")
    return row
