"""Personas: who an agent is (system prompt, provider chain, default tools, memory namespace).

A persona is stored per tenant under `persona_hash`, the SHA-256 of the canonical JSON of its
normalised document, so the same document always has the same hash and is stored once. A
changed document is a new version under the same name; a name resolves to its newest version.
Session tokens are minted for a hash, which pins the exact version a session runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from somastack.agent.llm import PROVIDERS
from somastack.errors import InvalidInput, NotFound
from somastack.governance.canonical import canonical_json
from somastack.store import Database

NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
TOOL_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")  # the tool registry's names
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")  # a memory namespace, ≤ 64
SYSTEM_PROMPT_MAX = 8000
TOOL_NAME_MAX = 128
TOOLS_MAX = 256
FIELDS = ("name", "system_prompt", "providers", "tools", "namespace")
_COLUMNS = "tenant_id, hash, name, doc, created_at"


@dataclass(frozen=True)
class Persona:
    tenant: str
    hash: str
    name: str
    system_prompt: str
    providers: list[str]
    tools: list[str]
    namespace: str
    created_at: datetime | None

    def doc(self) -> dict[str, Any]:
        """The persona document whose canonical JSON `hash` is the SHA-256 of."""
        return {"name": self.name, "system_prompt": self.system_prompt,
                "providers": list(self.providers), "tools": list(self.tools),
                "namespace": self.namespace}


def _text(doc: dict[str, Any], key: str, default: str | None = None) -> str:
    value = default if doc.get(key) is None else doc[key]
    if value is None:
        raise InvalidInput("is required", field=key)
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field=key)
    return value


def _names(doc: dict[str, Any], key: str, default: list[str]) -> list[str]:
    value = default if doc.get(key) is None else doc[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput("must be a list of strings", field=key)
    return list(dict.fromkeys(value))


def normalize(doc: dict[str, Any]) -> dict[str, Any]:
    """The persona document with defaults filled in; InvalidInput naming the first bad field.

    Defaults (for absent or null fields): providers ["local"], tools [], namespace "default".
    Duplicates are dropped; providers keep their order (the fallback chain), tools are sorted.
    """
    if not isinstance(doc, dict):
        raise InvalidInput("a persona is a JSON object", field="body")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field; expected {', '.join(FIELDS)}", field=unknown[0])
    name = _text(doc, "name")
    if not NAME_RE.fullmatch(name):
        raise InvalidInput("1-64 of a-z, 0-9, _ and -", field="name")
    if HASH_RE.fullmatch(name):
        raise InvalidInput("must not look like a persona hash (64 hex digits)", field="name")
    prompt = _text(doc, "system_prompt")
    if not 1 <= len(prompt) <= SYSTEM_PROMPT_MAX:
        raise InvalidInput(f"1-{SYSTEM_PROMPT_MAX} characters", field="system_prompt")
    providers = _names(doc, "providers", ["local"])
    if not providers:
        raise InvalidInput(f"at least one of {', '.join(PROVIDERS)}", field="providers")
    for i, p in enumerate(providers):
        if p not in PROVIDERS:
            raise InvalidInput(f"unknown provider {p!r}; expected any of {', '.join(PROVIDERS)}",
                               field=f"providers[{i}]")
    tools = sorted(_names(doc, "tools", []))
    if len(tools) > TOOLS_MAX:
        raise InvalidInput(f"at most {TOOLS_MAX} tools", field="tools")
    for i, t in enumerate(tools):
        if len(t) > TOOL_NAME_MAX or not TOOL_RE.fullmatch(t):
            raise InvalidInput(f"{t!r} is not a tool name (lowercase, dotted, e.g. memory.recall)",
                               field=f"tools[{i}]")
    namespace = _text(doc, "namespace", "default")
    if not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidInput("1-64 of letters, digits and _ . : / -, starting with a letter or "
                           "digit", field="namespace")
    return {"name": name, "system_prompt": prompt, "providers": providers, "tools": tools,
            "namespace": namespace}


def persona_hash(doc: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON (RFC 8785) of the normalised persona document."""
    return hashlib.sha256(canonical_json(normalize(doc))).hexdigest()


async def _rows(conn: psycopg.AsyncConnection, sql: str, params: Any) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


def _persona(row: dict[str, Any]) -> Persona:
    d = row["doc"]
    return Persona(tenant=row["tenant_id"], hash=row["hash"], name=d["name"],
                   system_prompt=d["system_prompt"], providers=list(d["providers"]),
                   tools=list(d["tools"]), namespace=d["namespace"], created_at=row["created_at"])


async def save_persona(conn: psycopg.AsyncConnection, tenant: str, doc: dict[str, Any], by: str
                       ) -> tuple[Persona, bool]:
    """Store the persona on the caller's transaction; (persona, True if it was not stored yet)."""
    clean = normalize(doc)
    digest = hashlib.sha256(canonical_json(clean)).hexdigest()
    rows = await _rows(
        conn,
        f"INSERT INTO personas (tenant_id, hash, name, doc, created_by) VALUES (%s, %s, %s, %s, %s) "
        f"ON CONFLICT (tenant_id, hash) DO NOTHING RETURNING {_COLUMNS}",
        (tenant, digest, clean["name"], Jsonb(clean), by))
    if rows:
        return _persona(rows[0]), True
    # DO NOTHING skipped a committed row (it waits out an uncommitted one), which the next
    # statement of this read-committed transaction sees.
    found = await find_persona(conn, tenant, digest)
    assert found is not None
    return found, False


async def find_persona(conn: psycopg.AsyncConnection, tenant: str, ref: str) -> Persona | None:
    """The persona of this tenant with hash `ref`, else the newest named `ref`; None if neither."""
    if HASH_RE.fullmatch(ref):
        sql = f"SELECT {_COLUMNS} FROM personas WHERE tenant_id = %s AND hash = %s"
    else:
        sql = (f"SELECT {_COLUMNS} FROM personas WHERE tenant_id = %s AND name = %s "
               "ORDER BY created_at DESC, hash LIMIT 1")
    rows = await _rows(conn, sql, (tenant, ref))
    return _persona(rows[0]) if rows else None


async def put_persona(db: Database, tenant: str, doc: dict[str, Any], by: str) -> Persona:
    """Store a persona (idempotent: the same document is the same hash and the same row)."""
    async with db.tenant(tenant) as conn:
        persona, _ = await save_persona(conn, tenant, doc, by)
    return persona


async def get_persona(db: Database, tenant: str, ref: str) -> Persona:
    """A persona by hash (64 hex) or by name (its newest version); NotFound(field="persona")."""
    async with db.tenant(tenant) as conn:
        found = await find_persona(conn, tenant, ref)
    if found is None:
        raise NotFound(f"persona {ref!r} not found", field="persona")
    return found


def _cursor(row: dict[str, Any]) -> str:
    raw = json.dumps([row["created_at"].isoformat(), row["hash"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(cursor: str) -> tuple[datetime, str]:
    try:
        at, digest = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(digest)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is malformed; pass next_cursor unchanged", field="cursor") from exc


async def list_personas(db: Database, tenant: str, limit: int = 50, cursor: str | None = None,
                        *, name: str | None = None) -> tuple[list[Persona], str | None]:
    """Personas (every version; of one name if given) in creation order, with the next cursor."""
    if not 1 <= limit <= 1000:
        raise InvalidInput("1-1000", field="limit")
    where = ["tenant_id = %(tenant)s"]
    params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1, "name": name}
    if name is not None:
        where.append("name = %(name)s")
    if cursor:
        params["at"], params["after"] = _position(cursor)
        where.append("(created_at, hash) > (%(at)s, %(after)s)")
    async with db.tenant(tenant) as conn:
        rows = await _rows(conn, f"SELECT {_COLUMNS} FROM personas WHERE {' AND '.join(where)} "
                                 "ORDER BY created_at, hash LIMIT %(limit)s", params)
    nxt = _cursor(rows[limit - 1]) if len(rows) > limit else None
    return [_persona(r) for r in rows[:limit]], nxt
