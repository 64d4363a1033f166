"""Remember, get, update, delete, list, link and forget memories — always scoped to one tenant."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from somastack.brain.embed import AsyncEmbedder
from somastack.brain.model import LIVE, MEMORY_COLUMNS, MemoryDraft, Written
from somastack.errors import Conflict, EmbedderMismatch, InvalidInput, NotFound
from somastack.store import Database, outbox
from somastack.store.oneshot import pipelined

# One multi-row INSERT per batch: a single statement, so the lexicon triggers run once per batch.
# (COPY would be faster but is refused on tables with row-level security.)
_INSERT_COLUMNS = (
    "id tenant_id namespace key content kind metadata tags importance event_time expires_at "
    "source trace_id content_hash embedder embedding"
).split()


def _insert_sql(n: int) -> str:
    row = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + ")"
    return f"INSERT INTO memories ({', '.join(_INSERT_COLUMNS)}) VALUES " + ", ".join([row] * n)

_UPDATE = """
UPDATE memories SET key = %(key)s, content = %(content)s, kind = %(kind)s, metadata = %(metadata)s,
  tags = %(tags)s, importance = %(importance)s, event_time = %(event_time)s,
  expires_at = %(expires_at)s, source = %(source)s, trace_id = %(trace_id)s,
  content_hash = %(content_hash)s, embedder = %(embedder)s, embedding = %(embedding)s,
  updated_at = now()
WHERE id = %(id)s AND tenant_id = %(tenant_id)s"""

_ROW_FIELDS = (
    "key content kind metadata tags importance event_time expires_at source trace_id "
    "content_hash embedder embedding"
).split()


def content_hash(content: str) -> str:
    """SHA-256 of the content with runs of white space folded to one space."""
    return hashlib.sha256(" ".join(content.split()).encode()).hexdigest()


def check_content(content: str, max_bytes: int, field: str) -> None:
    """Refuse blank content and content over the byte limit, naming the field."""
    if not content.strip():
        raise InvalidInput("content must not be empty", field=field)
    size = len(content.encode())
    if size > max_bytes:
        raise InvalidInput(f"content is {size} bytes; the limit is {max_bytes}", field=field)


def _field(prefix: str, i: int, leaf: str) -> str:
    """'items[{i}]', 3, 'content' → 'items[3].content'; no prefix → 'content'."""
    return f"{prefix.format(i=i)}.{leaf}" if prefix else leaf


def _draft_vector(d: MemoryDraft, embedder: AsyncEmbedder, prefix: str, i: int
                  ) -> np.ndarray | None:
    if d.embedding is None and d.embedder is None:
        return None
    if d.embedder != embedder.id:
        raise EmbedderMismatch(
            f"vectors from embedder {d.embedder!r} cannot be mixed with this server's "
            f"{embedder.id!r}; drop the vectors to re-embed",
            field=_field(prefix, i, "embedder"),
        )
    if d.embedding is None or len(d.embedding) != embedder.dims:
        got = 0 if d.embedding is None else len(d.embedding)
        raise InvalidInput(f"expected {embedder.dims} numbers, got {got}",
                           field=_field(prefix, i, "embedding"))
    vec = np.asarray(d.embedding, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    if norm < 1e-6:
        raise InvalidInput("the embedding is all zeros (it has no direction)",
                           field=_field(prefix, i, "embedding"))
    # Recall's dot products are cosines only between unit vectors (as this embedder makes them);
    # a given vector is made one, so that rounding in export → import cannot skew a score.
    return vec / norm


OVERLAP_UP_TO = 8  # remember calls of up to this many drafts embed while the rows are read


def _given(drafts: list[MemoryDraft], embedder: AsyncEmbedder, prefix: str, max_bytes: int
           ) -> list[np.ndarray | None]:
    """Check every draft (content, vectors it carries); the vectors given, None where to embed."""
    given: list[np.ndarray | None] = []
    for i, d in enumerate(drafts):
        check_content(d.content, max_bytes, _field(prefix, i, "content"))
        given.append(_draft_vector(d, embedder, prefix, i))
    return given


async def _vectors(drafts: list[MemoryDraft], embedder: AsyncEmbedder,
                   given: list[np.ndarray | None]) -> list[np.ndarray]:
    todo = [i for i, v in enumerate(given) if v is None]
    out = list(given)
    if todo:
        computed = await embedder.embed([drafts[i].content for i in todo])
        for row, i in enumerate(todo):
            out[i] = computed[row]
    return [v for v in out if v is not None]


def _row(d: MemoryDraft, tenant: str, vec: np.ndarray, embedder_id: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(), "tenant_id": tenant, "namespace": d.namespace, "key": d.key,
        "content": d.content, "kind": d.kind, "metadata": dict(d.metadata), "tags": list(d.tags),
        "importance": d.importance, "event_time": d.event_time, "expires_at": d.expires_at,
        "source": d.source, "trace_id": d.trace_id, "content_hash": content_hash(d.content),
        "embedder": embedder_id, "embedding": vec,
    }


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Same content again: keep the memory, raise importance, merge metadata and tags."""
    into["importance"] = max(into["importance"], new["importance"])
    into["metadata"] = {**into["metadata"], **new["metadata"]}
    into["tags"] = list(dict.fromkeys([*into["tags"], *new["tags"]]))
    into["key"] = into["key"] or new["key"]


async def remember(
    db: Database, embedder: AsyncEmbedder, tenant: str, drafts: list[MemoryDraft],
    *, max_bytes: int, field_prefix: str = "", timings: dict[str, float] | None = None,
) -> list[Written]:
    """Store drafts all-or-nothing; an existing key is updated and existing content is merged.

    Small calls (up to OVERLAP_UP_TO drafts) embed while the existing rows are read, so the
    read's round trip is not added to the embedding's time; `timings["embed_wait_s"]` says how
    long the write then waited for the vectors."""
    given = _given(drafts, embedder, field_prefix, max_bytes)  # bad input: nothing touched
    pending = asyncio.ensure_future(_vectors(drafts, embedder, given))
    try:
        if len(drafts) > OVERLAP_UP_TO:  # imports: no transaction held open while they embed
            await pending
        for _ in range(3):  # a concurrent writer of the same content/key wins a race: re-read
            try:
                async with pipelined(db, tenant) as conn:  # two round trips: read, then write
                    written = await _write(conn, tenant, drafts, pending, embedder.id, timings)
                    await outbox.emit(conn, tenant_id=tenant, topic="memory.events",
                                      type="memory.remembered",
                                      payload={"items": [{"id": str(w.id), "status": w.status}
                                                         for w in written]})
                    return written
            except psycopg.errors.UniqueViolation:
                continue
    finally:
        if not pending.done():  # the read failed first: nobody will use the vectors
            pending.cancel()
    raise Conflict("concurrent writes of the same memory kept colliding; retry", field="content")


async def _write(
    conn: psycopg.AsyncConnection[Any], tenant: str, drafts: list[MemoryDraft],
    vectors: Awaitable[list[np.ndarray]], embedder_id: str, timings: dict[str, float] | None,
) -> list[Written]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT id, namespace, {', '.join(_ROW_FIELDS)} FROM memories "
        "WHERE tenant_id = %s AND namespace = ANY(%s) AND (key = ANY(%s) OR content_hash = ANY(%s)) "
        "FOR UPDATE",
        (tenant, list({d.namespace for d in drafts}), [d.key for d in drafts if d.key],
         [content_hash(d.content) for d in drafts]),
    )
    existing = await cur.fetchall()
    waited = time.perf_counter()
    vecs = await vectors
    if timings is not None:
        timings["embed_wait_s"] = time.perf_counter() - waited
    new_rows = [_row(d, tenant, v, embedder_id) for d, v in zip(drafts, vecs, strict=True)]
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    by_hash: dict[tuple[str, str], dict[str, Any]] = {}
    for row in existing:
        row["tenant_id"] = tenant
        by_hash[(row["namespace"], row["content_hash"])] = row
        if row["key"]:
            by_key[(row["namespace"], row["key"])] = row
    inserts: dict[UUID, dict[str, Any]] = {}
    updates: dict[UUID, dict[str, Any]] = {}
    out: list[Written] = []
    target: dict[str, Any] | None  # the merge branch picks one of two optionals, then asserts
    for r in new_rows:
        ns = r["namespace"]
        same_key = by_key.get((ns, r["key"])) if r["key"] else None
        same_hash = by_hash.get((ns, r["content_hash"]))
        if same_key is not None and same_key["content_hash"] != r["content_hash"]:
            if same_hash is not None:
                raise Conflict(f"another memory in {ns!r} already has this content", field="content")
            by_hash.pop((ns, same_key["content_hash"]), None)
            same_key.update({k: r[k] for k in _ROW_FIELDS})
            by_hash[(ns, r["content_hash"])] = same_key
            target, status = same_key, "updated"
        elif same_hash is not None or same_key is not None:
            target = same_hash if same_hash is not None else same_key
            assert target is not None
            _merge(target, r)
            status = "merged"
        else:
            inserts[r["id"]] = target = r
            status = "created"
        if target["key"]:
            by_key[(ns, target["key"])] = target
        by_hash.setdefault((ns, target["content_hash"]), target)
        if target["id"] not in inserts:
            updates[target["id"]] = target
        out.append(Written(target["id"], status))
    for rows in (inserts, updates):
        for row in rows.values():
            row["metadata"] = Jsonb(row["metadata"])
    async with conn.cursor() as c:
        if inserts:
            params = [row[k] for row in inserts.values() for k in _INSERT_COLUMNS]
            await c.execute(_insert_sql(len(inserts)), params)
        if updates:
            await c.executemany(_UPDATE, list(updates.values()))
    return out


def _columns(include_embedding: bool) -> str:
    return MEMORY_COLUMNS + (", embedding" if include_embedding else "")


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its pgvector value (if selected) as a list of floats."""
    if "embedding" in row:
        row["embedding"] = row["embedding"].to_list()
    return row


async def get(db: Database, tenant: str, memory_id: UUID, *, include_embedding: bool = False
              ) -> dict[str, Any]:
    """One live memory of this tenant, or NotFound."""
    async with db.tenant(tenant) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_columns(include_embedding)} FROM memories "
            f"WHERE id = %s AND tenant_id = %s AND {LIVE}",
            (memory_id, tenant),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"memory {memory_id} not found", field="id")
    return _plain(row)


async def update(
    db: Database, embedder: AsyncEmbedder, tenant: str, memory_id: UUID, changes: dict[str, Any],
    *, max_bytes: int,
) -> dict[str, Any]:
    """Replace the given fields of one memory; new content is re-embedded."""
    if "content" in changes:
        check_content(changes["content"], max_bytes, "content")
        (vec,) = await embedder.embed([changes["content"]])
        changes = {**changes, "content_hash": content_hash(changes["content"]),
                   "embedding": vec, "embedder": embedder.id}
    if "metadata" in changes:
        changes["metadata"] = Jsonb(changes["metadata"])
    sets = ", ".join(f"{k} = %({k})s" for k in changes)
    try:
        async with db.tenant(tenant) as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"UPDATE memories SET {sets}{', ' if sets else ''}updated_at = now() "
                f"WHERE id = %(id)s AND tenant_id = %(tenant)s AND {LIVE} "
                f"RETURNING {MEMORY_COLUMNS}",
                {**changes, "id": memory_id, "tenant": tenant},
            )
            row = await cur.fetchone()
            if row is not None:
                await outbox.emit(conn, tenant_id=tenant, topic="memory.events", type="memory.updated",
                                  payload={"id": str(memory_id), "fields": sorted(changes)})
    except psycopg.errors.UniqueViolation as exc:
        field = "key" if "memories_key_uq" in str(exc) else "content"
        raise Conflict(f"another memory in this namespace has the same {field}", field=field) from exc
    if row is None:
        raise NotFound(f"memory {memory_id} not found", field="id")
    if "content" in changes:  # its own and its chain neighbours' context vectors are stale
        stale = {memory_id, *await _chain_neighbours(db, tenant, memory_id)}
        await refresh_context(db, embedder, tenant, stale)
    return row


async def _chain_neighbours(db: Database, tenant: str, memory_id: UUID) -> set[UUID]:
    async with db.tenant(tenant) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT src AS other FROM memory_links WHERE tenant_id = %(t)s AND dst = %(id)s AND rel = %(r)s "
            "UNION SELECT dst FROM memory_links WHERE tenant_id = %(t)s AND src = %(id)s AND rel = %(r)s",
            {"t": tenant, "id": memory_id, "r": CHAIN},
        )
        return {r["other"] for r in await cur.fetchall()}


async def delete(db: Database, tenant: str, memory_id: UUID) -> None:
    """Delete one memory and its links, or NotFound."""
    async with db.tenant(tenant) as conn:
        cur = await conn.execute(
            "DELETE FROM memories WHERE id = %s AND tenant_id = %s RETURNING id", (memory_id, tenant)
        )
        if await cur.fetchone() is None:
            raise NotFound(f"memory {memory_id} not found", field="id")
        await outbox.emit(conn, tenant_id=tenant, topic="memory.events", type="memory.deleted",
                          payload={"id": str(memory_id)})


def encode_cursor(created_at: datetime, memory_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(memory_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) position a cursor points after; InvalidInput if it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, mid = json.loads(raw)
        return datetime.fromisoformat(at), UUID(mid)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is malformed; pass next_cursor unchanged", field="cursor") from exc


async def list_page(
    db: Database, tenant: str, *, namespace: str | None, limit: int, cursor: str | None,
    kind: str | None = None, tag: str | None = None, include_embedding: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """Memories in creation order, `limit` at a time, with the cursor of the next page."""
    where = ["tenant_id = %(tenant)s", LIVE]
    params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1}
    if namespace is not None:
        where.append("namespace = %(ns)s")
        params["ns"] = namespace
    if kind is not None:
        where.append("kind = %(kind)s")
        params["kind"] = kind
    if tag is not None:
        where.append("tags @> ARRAY[%(tag)s]")
        params["tag"] = tag
    if cursor:
        params["at"], params["after"] = decode_cursor(cursor)
        where.append("(created_at, id) > (%(at)s, %(after)s)")
    async with db.tenant(tenant) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_columns(include_embedding)} FROM memories WHERE {' AND '.join(where)} "
            "ORDER BY created_at, id LIMIT %(limit)s",
            params,
        )
        rows = [_plain(r) for r in await cur.fetchall()]
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return rows, nxt


CHAIN = "next"  # the relation that orders memories into a sequence (turns of a conversation)


async def refresh_context(db: Database, embedder: AsyncEmbedder, tenant: str, ids: set[UUID]) -> None:
    """Re-embed the context vectors of these memories: previous + own + next content on the chain.

    Derived data, written after the change that made it stale; a memory without chain
    neighbours keeps no context vector (recall then uses its own vector).
    """
    if not ids:
        return
    async with db.tenant(tenant) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"""SELECT m.id, m.content,
              (SELECT p.content FROM memory_links l JOIN memories p ON p.id = l.src
                WHERE l.tenant_id = m.tenant_id AND l.dst = m.id AND l.rel = '{CHAIN}' LIMIT 1) AS prev,
              (SELECT x.content FROM memory_links l JOIN memories x ON x.id = l.dst
                WHERE l.tenant_id = m.tenant_id AND l.src = m.id AND l.rel = '{CHAIN}' LIMIT 1) AS next
            FROM memories m WHERE m.tenant_id = %s AND m.id = ANY(%s)""",
            (tenant, list(ids)),
        )
        rows = await cur.fetchall()
    rows = [r for r in rows if r["prev"] or r["next"]]
    if not rows:
        return
    vecs = await embedder.embed(["\n".join(x for x in (r["prev"], r["content"], r["next"]) if x)
                                 for r in rows])
    async with db.tenant(tenant) as conn, conn.cursor() as c:
        await c.executemany(
            "UPDATE memories SET context_embedding = %s WHERE id = %s AND tenant_id = %s",
            [(v, r["id"], tenant) for r, v in zip(rows, vecs, strict=True)],
        )


async def link(db: Database, tenant: str, src: UUID, dst: UUID, rel: str, weight: float,
               embedder: AsyncEmbedder | None = None) -> dict[str, Any]:
    """Create or re-weight the link src -rel-> dst; both memories must be this tenant's."""
    (row,) = await link_many(db, tenant, [(src, dst, rel, weight)], field_prefix="", embedder=embedder)
    return row


async def link_many(db: Database, tenant: str, links: list[tuple[UUID, UUID, str, float]],
                    *, field_prefix: str = "links[{i}]", embedder: AsyncEmbedder | None = None
                    ) -> list[dict[str, Any]]:
    """Create or re-weight many links in one transaction (all or nothing).

    Chain links (rel 'next') then refresh the context vectors of both ends when an embedder
    is given.
    """
    async with db.tenant(tenant) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT id FROM memories WHERE tenant_id = %s AND id = ANY(%s) AND {LIVE}",
            (tenant, list({m for s, d, _, _ in links for m in (s, d)})),
        )
        found = {r["id"] for r in await cur.fetchall()}
        for i, (src, dst, _, _) in enumerate(links):
            for name, mid in (("src", src), ("dst", dst)):
                if mid not in found:
                    raise NotFound(f"memory {mid} not found", field=_field(field_prefix, i, name))
        unique = {(s, d, r): w for s, d, r, w in links}  # the last weight given for a triple wins
        values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(unique))
        params = [x for (s, d, r), w in unique.items() for x in (tenant, s, d, r, w)]
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"INSERT INTO memory_links (tenant_id, src, dst, rel, weight) VALUES {values} "
            "ON CONFLICT (tenant_id, src, dst, rel) DO UPDATE SET weight = EXCLUDED.weight "
            "RETURNING src, dst, rel, weight, created_at",
            params,
        )
        rows = {(r["src"], r["dst"], r["rel"]): r for r in await cur.fetchall()}
    if embedder is not None:
        await refresh_context(db, embedder, tenant,
                              {m for s, d, r, _ in links if r == CHAIN for m in (s, d)})
    return [rows[(s, d, r)] for s, d, r, _ in links]


async def links_of(db: Database, tenant: str, memory_id: UUID) -> dict[str, list[dict[str, Any]]]:
    """Outgoing and incoming links of one memory."""
    await get(db, tenant, memory_id)
    async with db.tenant(tenant) as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT src, dst, rel, weight, created_at FROM memory_links "
            "WHERE tenant_id = %s AND (src = %s OR dst = %s) ORDER BY created_at",
            (tenant, memory_id, memory_id),
        )
        rows = await cur.fetchall()
    return {
        "outgoing": [r for r in rows if r["src"] == memory_id],
        "incoming": [r for r in rows if r["dst"] == memory_id],
    }


async def forget(
    db: Database, tenant: str, *, namespace: str | None, subject: dict[str, Any] | None,
    before: datetime | None,
) -> tuple[UUID, int]:
    """Delete the memories matching every given criterion (links cascade); record a receipt."""
    if namespace is None and not subject and before is None:
        raise InvalidInput("give at least one of namespace, subject, before", field="namespace")
    where = ["tenant_id = %(tenant)s"]
    params: dict[str, Any] = {"tenant": tenant}
    if namespace is not None:
        where.append("namespace = %(ns)s")
        params["ns"] = namespace
    if subject:
        where.append("metadata @> %(subject)s")
        params["subject"] = Jsonb(subject)
    if before is not None:
        where.append("created_at < %(before)s")
        params["before"] = before
    receipt = uuid.uuid4()
    criteria = {"namespace": namespace, "subject": subject,
                "before": before.isoformat() if before else None}
    async with db.tenant(tenant) as conn:
        cur = await conn.execute(f"DELETE FROM memories WHERE {' AND '.join(where)}", params)
        deleted = cur.rowcount
        await conn.execute(
            "INSERT INTO forget_receipts (id, tenant_id, criteria, deleted) VALUES (%s, %s, %s, %s)",
            (receipt, tenant, Jsonb(criteria), deleted),
        )
        await outbox.emit(conn, tenant_id=tenant, topic="memory.events", type="memory.forgotten",
                          payload={"receipt_id": str(receipt), "deleted": deleted, "criteria": criteria})
    return receipt, deleted


async def purge_expired(db: Database) -> int:
    """Delete memories past their expiry (reads already hide them); returns how many."""
    async with db.system() as conn:
        cur = await conn.execute("DELETE FROM memories WHERE expires_at <= now()")
        return cur.rowcount
