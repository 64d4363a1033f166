"""API keys: `soma_<id>_<secret>`, shown once, stored as SHA3-256 of the secret, scoped, revocable.

Verified keys are remembered for a few seconds (`VerifiedKeys`), so that most requests learn
their caller without a database round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from somastack.errors import NotFound, Unauthenticated
from somastack.governance import audit
from somastack.governance.principal import Principal

PREFIX = "soma_"
_KEY_RE = re.compile(r"^soma_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_COLUMNS = "id, tenant_id, name, scopes, created_by, created_at, last_used_at, revoked_at"
_TOUCH_EVERY = "60 seconds"  # last_used_at is refreshed at most this often per key
CACHE_TTL_S = 5.0  # the longest a process may act on a key or tenant it was not told changed
_CACHE_MAX = 10_000  # entries; past this, expired ones are dropped on the next store


def looks_like_key(credential: str) -> bool:
    return credential.startswith(PREFIX)


def hash_secret(secret: str) -> str:
    return hashlib.sha3_256(secret.encode()).hexdigest()


async def create(conn: psycopg.AsyncConnection, *, tenant_id: str, name: str, scopes: list[str],
                 created_by: str) -> tuple[dict[str, Any], str]:
    """Store a new key; returns its row and the plaintext key (never stored, shown once)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"INSERT INTO api_keys (id, tenant_id, name, secret_hash, scopes, created_by) "
        f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (key_id, tenant_id, name, hash_secret(secret), scopes, created_by),
    )
    row = await cur.fetchone()
    assert row is not None
    return row, f"{PREFIX}{key_id}_{secret}"


async def list_for(conn: psycopg.AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = %s ORDER BY created_at, id", (tenant_id,))
    return list(await cur.fetchall())


async def revoke(conn: psycopg.AsyncConnection, tenant_id: str, key_id: str) -> dict[str, Any]:
    """Revoke one of this tenant's keys (idempotent); NotFound for another tenant's key."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
        f"WHERE id = %s AND tenant_id = %s RETURNING {_COLUMNS}", (key_id, tenant_id))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"key {key_id!r} not found", field="key_id")
    VERIFIED.forget(key_id=key_id)
    return row


def parse(presented: str) -> tuple[str, str]:
    """(key id, SHA3-256 of the secret) of a presented key; Unauthenticated if malformed."""
    m = _KEY_RE.fullmatch(presented)
    if m is None:
        raise Unauthenticated("the API key is malformed", field="Authorization")
    return m.group(1), hash_secret(m.group(2))


async def authenticate(conn: psycopg.AsyncConnection, presented: str) -> Principal:
    """The principal of a presented API key; Unauthenticated saying what is wrong with it."""
    key_id, secret_hash = parse(presented)
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT k.tenant_id, k.secret_hash, k.scopes, k.revoked_at, t.disabled_at, t.limits "
        "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = %s", (key_id,))
    row = await cur.fetchone()
    if row is None or not hmac.compare_digest(row["secret_hash"], secret_hash):
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


@dataclass(frozen=True)
class _Verified:
    secret_hash: str
    principal: Principal
    until: float


class VerifiedKeys:
    """Principals of API keys verified in the last `ttl_s` seconds, by key id.

    An entry is only served for the secret it was verified with, and is dropped when its key or
    tenant changes: at once when the key is revoked in this process, a few milliseconds after the
    commit elsewhere (audit.append announces key and tenant changes on GOVERNANCE_CHANNEL, see
    `on_change`), and `ttl_s` after it was read at the latest, should an announcement be missed.
    A lookup that read the database before a change was announced does not store what it read
    (the epoch check). Refusals are never remembered: they are read and audited every time.
    """

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self.epoch = 0  # bumped by every forget
        self._entries: dict[str, _Verified] = {}
        self._refreshing: set[str] = set()

    def get(self, key_id: str, secret_hash: str) -> Principal | None:
        entry = self._entries.get(key_id)
        if entry is None or entry.until <= time.monotonic():
            return None
        if not hmac.compare_digest(entry.secret_hash, secret_hash):
            return None
        return entry.principal

    def due(self, key_id: str) -> bool:
        """True (once per entry) when an entry being served is past half its TTL: the caller
        then reads it again in the background (and calls `refreshed`), so a credential in steady
        use is never read on a request's path, and never served from a read older than ttl_s."""
        entry = self._entries.get(key_id)
        if entry is None or key_id in self._refreshing:
            return False
        if entry.until - time.monotonic() > self.ttl_s / 2:
            return False
        self._refreshing.add(key_id)
        return True

    def refreshed(self, key_id: str) -> None:
        self._refreshing.discard(key_id)

    def put(self, key_id: str, secret_hash: str, principal: Principal, epoch: int) -> None:
        """Remember a principal read while `epoch` was current (ignored if it no longer is)."""
        if epoch != self.epoch:
            return
        now = time.monotonic()
        if len(self._entries) >= _CACHE_MAX:
            self._entries = {k: e for k, e in self._entries.items() if e.until > now}
        self._entries[key_id] = _Verified(secret_hash, principal, now + self.ttl_s)

    def forget(self, *, key_id: str | None = None, tenant_id: str | None = None,
               actor: str | None = None) -> None:
        """Drop one key, every key of a tenant, the credentials of an actor (a session token's
        `token:<jti>`), or (none given) everything."""
        self.epoch += 1
        if key_id is None and tenant_id is None and actor is None:
            self._entries.clear()
        elif key_id is not None:
            self._entries.pop(key_id, None)
        elif actor is not None:
            self._entries = {k: e for k, e in self._entries.items()
                             if e.principal.actor != actor}
        else:
            self._entries = {k: e for k, e in self._entries.items()
                             if e.principal.tenant_id != tenant_id}

    def drop(self, key_id: str) -> None:
        """Drop one entry that is no longer usable (expired); nothing changed in the database."""
        self._entries.pop(key_id, None)

    def on_change(self, payload: str | None) -> None:
        """A governance announcement (JSON with tenant_id and resource); None = some were missed."""
        change = audit.announcement(payload)
        if change is None:
            self.forget()
        elif str(change.get("resource", "")).startswith("key:"):
            self.forget(key_id=change["resource"].removeprefix("key:"))
        elif str(change.get("resource", "")).startswith("token:"):  # a session token revoked
            self.forget(actor=change["resource"])
        else:
            self.forget(tenant_id=change.get("tenant_id"))


VERIFIED = VerifiedKeys()  # one per process: every server of the process shares what it verified
