"""Ed25519 keys that sign session tokens: one active key, rotated on demand, published as JWKS.

Retired keys keep verifying until every token they signed has expired (the longest session
lifetime after their retirement), so rotation never cuts a live session short.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.rows import dict_row

_LIST = "SELECT kid, public_raw, created_at, retired_at FROM signing_keys"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def _insert(conn: psycopg.AsyncConnection) -> str:
    kid = f"k{secrets.token_hex(8)}"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    await conn.execute("INSERT INTO signing_keys (kid, private_pem, public_raw) VALUES (%s, %s, %s)",
                       (kid, pem, _b64url(raw)))
    return kid


async def ensure_active(conn: psycopg.AsyncConnection) -> str:
    """The kid of the active key, creating the first one."""
    await conn.execute("LOCK TABLE signing_keys IN EXCLUSIVE MODE")
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT kid FROM signing_keys WHERE retired_at IS NULL")
    row = await cur.fetchone()
    return row["kid"] if row else await _insert(conn)


async def rotate(conn: psycopg.AsyncConnection) -> dict[str, Any]:
    """Retire the active key and create a new one; returns {kid, retired}."""
    await conn.execute("LOCK TABLE signing_keys IN EXCLUSIVE MODE")
    cur = await conn.cursor(row_factory=dict_row).execute(
        "UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL RETURNING kid")
    retired = [r["kid"] for r in await cur.fetchall()]
    return {"kid": await _insert(conn), "retired": retired}


async def active_private(conn: psycopg.AsyncConnection) -> tuple[str, Ed25519PrivateKey]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT kid, private_pem FROM signing_keys WHERE retired_at IS NULL")
    row = await cur.fetchone()
    if row is None:
        raise LookupError("no active signing key")
    key = serialization.load_pem_private_key(row["private_pem"].encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return row["kid"], key


async def verifying(conn: psycopg.AsyncConnection, max_ttl_s: int) -> list[dict[str, Any]]:
    """Keys that may still have live tokens: active, or retired less than max_ttl_s ago."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"{_LIST} WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => %s) "
        "ORDER BY created_at", (max_ttl_s,))
    return list(await cur.fetchall())


async def public_key(conn: psycopg.AsyncConnection, kid: str, max_ttl_s: int
                     ) -> Ed25519PublicKey | None:
    for row in await verifying(conn, max_ttl_s):
        if row["kid"] == kid:
            raw = base64.urlsafe_b64decode(row["public_raw"] + "=" * (-len(row["public_raw"]) % 4))
            return Ed25519PublicKey.from_public_bytes(raw)
    return None


async def list_all(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    cur = await conn.cursor(row_factory=dict_row).execute(f"{_LIST} ORDER BY created_at")
    return list(await cur.fetchall())


def jwk(row: dict[str, Any]) -> dict[str, str]:
    """RFC 8037 OKP JWK of one key."""
    return {"kty": "OKP", "crv": "Ed25519", "x": row["public_raw"], "kid": row["kid"],
            "alg": "EdDSA", "use": "sig"}
