"""API keys: `soma_<id>_<secret>`, shown once, stored as SHA3-256 of the secret, scoped, revocable."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

import psycopg

from somastack.errors import NotFound, Unauthenticated
from somastack.governance.principal import Principal

PREFIX = "soma_"
_KEY_RE = re.compile(r"^soma_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_COLUMNS = "id, tenant_id, name, scopes, created_by, created_at, last_used_at, revoked_at"
_TOUCH_EVERY = "60 seconds"  # last_used_at is refreshed at most this often per key


def looks_like_key(credential: str) -> bool:
    return credential.startswith(PREFIX)


def hash_secret(secret: str) -> str:
    return hashlib.sha3_256(secret.encode()).hexdigest()


async def create(conn: psycopg.AsyncConnection, *, tenant_id: str, name: str, scopes: list[str],
                 created_by: str) -> tuple[dict[str, Any], str]:
    """Store a new key; returns its row and the plaintext key (never stored, shown once)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    cur = await conn.execute(
        f"INSERT INTO api_keys (id, tenant_id, name, secret_hash, scopes, created_by) "
        f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (key_id, tenant_id, name, hash_secret(secret), scopes, created_by),
    )
    row = await cur.fetchone()
    assert row is not None
    return row, f"{PREFIX}{key_id}_{secret}"


async def list_for(conn: psycopg.AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = %s ORDER BY created_at, id", (tenant_id,))
    return list(await cur.fetchall())


async def revoke(conn: psycopg.AsyncConnection, tenant_id: str, key_id: str) -> dict[str, Any]:
    """Revoke one of this tenant's keys (idempotent); NotFound for another tenant's key."""
    cur = await conn.execute(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
        f"WHERE id = %s AND tenant_id = %s RETURNING {_COLUMNS}", (key_id, tenant_id))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"key {key_id!r} not found", field="id")
    return row


async def authenticate(conn: psycopg.AsyncConnection, presented: str) -> Principal:
    """The principal of a presented API key; Unauthenticated saying what is wrong with it."""
    m = _KEY_RE.fullmatch(presented)
    if m is None:
        raise Unauthenticated("the API key is malformed", field="Authorization")
    key_id, secret = m.groups()
    cur = await conn.execute(
        "SELECT k.tenant_id, k.secret_hash, k.scopes, k.revoked_at, t.disabled_at, t.limits "
        "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = %s", (key_id,))
    row = await cur.fetchone()
    if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
        raise Unauthenticated("the API key is not valid", field="Authorization")
    if row["revoked_at"] is not None:
        raise Unauthenticated("the API key was revoked", field="Authorization")
    if row["disabled_at"] is not None:
        raise Unauthenticated(f"tenant {row['tenant_id']!r} is disabled", field="Authorization")
    await conn.execute(
        f"UPDATE api_keys SET last_used_at = now() WHERE id = %s "
        f"AND (last_used_at IS NULL OR last_used_at < now() - interval '{_TOUCH_EVERY}')", (key_id,))
    return Principal(tenant_id=row["tenant_id"], actor=f"key:{key_id}", kind="api_key",
                     scopes=frozenset(row["scopes"]), limits=row["limits"])
