"""Per-call state in PostgreSQL: idempotency records and rate-limit windows (one tenant each).

Idempotency: the first call with a key claims `idem:{tool}:{key}` (status running); on success
its result is stored (done) for the TTL and every retry with the same key and arguments gets it
back without running; a failed or abandoned call drops its claim so a retry runs again. The same
key with different arguments is a Conflict. A claim left running by a crashed process is taken
over after `stale_s`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from somastack.errors import Conflict, InvalidInput, RateLimited
from somastack.ledger.budgets import fetch_rows
from somastack.store import Database

MAX_KEY = 200


def idempotency_key(tool: str, key: str) -> str:
    if not key or len(key) > MAX_KEY:
        raise InvalidInput(f"must be 1-{MAX_KEY} characters", field="idempotency_key")
    return f"idem:{tool}:{key}"


def args_hash(args: dict[str, Any]) -> str:
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """Either ours to run (`replay` None) or the stored first result to return."""

    key: str
    replay: dict[str, Any] | None = None


async def claim(db: Database, tenant: str, tool: str, key: str, args: dict[str, Any], *,
                ttl_s: int, stale_s: float) -> Claim:
    """Claim the key for this call, or return the stored result of the first call."""
    full, digest = idempotency_key(tool, key), args_hash(args)
    async with db.tenant(tenant) as conn:
        await conn.execute(
            "DELETE FROM tool_idempotency WHERE tenant_id = %s AND key = %s AND (expires_at <= now() "
            "OR (status = 'running' AND created_at < now() - make_interval(secs => %s)))",
            (tenant, full, stale_s))
        won = await fetch_rows(
            conn,
            "INSERT INTO tool_idempotency (tenant_id, key, tool, args_hash, status, expires_at) "
            "VALUES (%s, %s, %s, %s, 'running', now() + make_interval(secs => %s)) "
            "ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key",
            (tenant, full, tool, digest, ttl_s))
        if won:
            return Claim(full)
        rows = await fetch_rows(
            conn, "SELECT args_hash, status, result FROM tool_idempotency "
                  "WHERE tenant_id = %s AND key = %s", (tenant, full))
    if not rows:  # the holder dropped its claim between our insert and select
        raise Conflict("a call with this key just finished without a result; retry",
                       field="idempotency_key")
    row = rows[0]
    if row["args_hash"] != digest:
        raise Conflict("this idempotency key was used with different arguments",
                       field="idempotency_key")
    if row["status"] != "done":
        raise Conflict("a call with this idempotency key is still running", field="idempotency_key")
    return Claim(full, replay=row["result"])


async def complete(db: Database, tenant: str, key: str, result: dict[str, Any]) -> None:
    """Store the first result under the claimed key."""
    async with db.tenant(tenant) as conn:
        await conn.execute(
            "UPDATE tool_idempotency SET status = 'done', result = %s "
            "WHERE tenant_id = %s AND key = %s", (Jsonb(result), tenant, key))


async def drop(db: Database, tenant: str, key: str) -> None:
    """Give up the claim (the call failed or was abandoned), so a retry runs again."""
    async with db.tenant(tenant) as conn:
        await conn.execute(
            "DELETE FROM tool_idempotency WHERE tenant_id = %s AND key = %s AND status = 'running'",
            (tenant, key))


async def admit(db: Database, tenant: str, tool: str, per_minute: int | None) -> None:
    """Count a call in this minute's window; RateLimited (nothing counted) past the limit."""
    if per_minute is None:
        return
    async with db.tenant(tenant) as conn:
        await conn.execute(
            "DELETE FROM tool_rate_windows WHERE tenant_id = %s AND tool = %s "
            "AND window_start < date_trunc('minute', now())", (tenant, tool))
        rows = await fetch_rows(
            conn,
            "INSERT INTO tool_rate_windows (tenant_id, tool, window_start, calls) "
            "VALUES (%s, %s, date_trunc('minute', now()), 1) "
            "ON CONFLICT (tenant_id, tool, window_start) "
            "DO UPDATE SET calls = tool_rate_windows.calls + 1 RETURNING calls",
            (tenant, tool))
        if rows[0]["calls"] > per_minute:
            raise RateLimited(f"{tool}: more than {per_minute} calls this minute", field="tool")
