"""/v1/memory: remember, recall, get, update, delete, list, link, forget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response

from somastack.api.deps import State, Tenant
from somastack.api.memory_schemas import (
    BatchOut,
    ForgetIn,
    ForgetOut,
    Kind,
    LinkBatchIn,
    LinkBatchOut,
    LinkIn,
    LinkOut,
    LinksOut,
    MemoryOut,
    Namespace,
    PageOut,
    PatchIn,
    RecallIn,
    RecallOut,
    RememberBatchIn,
    RememberIn,
    WrittenOut,
    recall_json,
)
from somastack.brain import memory, recall
from somastack.errors import InvalidInput

router = APIRouter(prefix="/v1/memory", tags=["memory"])


@router.post("/remember", response_model=WrittenOut)
async def remember_one(body: RememberIn, s: State, tenant: Tenant) -> Any:
    """Remember one item; same key updates it, same content merges into the existing memory."""
    (written,) = await memory.remember(
        s.db, s.embedder, tenant, [body.draft()], max_bytes=s.settings.max_content_bytes
    )
    return written


@router.post("/remember/batch", response_model=BatchOut)
async def remember_batch(body: RememberBatchIn, s: State, tenant: Tenant) -> Any:
    """Remember up to 1,000 items in one transaction: all are stored, or none."""
    drafts = [item.draft(body.namespace or "default") for item in body.items]
    written = await memory.remember(
        s.db, s.embedder, tenant, drafts, max_bytes=s.settings.max_content_bytes,
        field_prefix="items[{i}]",
    )
    counts = {k: sum(w.status == k for w in written) for k in ("created", "updated", "merged")}
    return {"items": written, **counts}


@router.post("/recall", response_model=RecallOut)
async def recall_memories(body: RecallIn, s: State, tenant: Tenant) -> Response:
    """Rank memories for a query; each block carries its score breakdown and provenance."""
    result = await recall.recall(s.db, s.embedder, tenant, body.to_query(),
                                 candidates=s.settings.recall_candidates)
    s.metrics.recall.observe(result.timings_ms["total"] / 1000)
    return Response(recall_json(result), media_type="application/json")


@router.get("", response_model=PageOut)
async def list_memories(
    s: State, tenant: Tenant,
    namespace: Namespace | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
    kind: Kind | None = None,
    tag: str | None = None,
    include_embedding: bool = False,
) -> Any:
    """Memories in creation order; pass `next_cursor` back as `cursor` for the next page."""
    items, nxt = await memory.list_page(
        s.db, tenant, namespace=namespace, limit=limit, cursor=cursor, kind=kind, tag=tag,
        include_embedding=include_embedding,
    )
    return {"items": items, "next_cursor": nxt}


@router.get("/{id}", response_model=MemoryOut)
async def get_memory(id: UUID, s: State, tenant: Tenant, include_embedding: bool = False) -> Any:
    return await memory.get(s.db, tenant, id, include_embedding=include_embedding)


@router.patch("/{id}", response_model=MemoryOut)
async def patch_memory(id: UUID, body: PatchIn, s: State, tenant: Tenant) -> Any:
    """Change the given fields; new content is re-embedded. `ttl_s` sets a new expiry."""
    changes = body.model_dump(exclude_unset=True)
    if "ttl_s" in changes:
        if "expires_at" in changes:
            raise InvalidInput("give ttl_s or expires_at, not both", field="ttl_s")
        changes["expires_at"] = datetime.now(UTC) + timedelta(seconds=changes.pop("ttl_s"))
    if not changes:
        raise InvalidInput("nothing to change", field="body")
    return await memory.update(s.db, s.embedder, tenant, id, changes,
                               max_bytes=s.settings.max_content_bytes)


@router.delete("/{id}", status_code=204)
async def delete_memory(id: UUID, s: State, tenant: Tenant) -> Response:
    """Delete one memory; its links go with it."""
    await memory.delete(s.db, tenant, id)
    return Response(status_code=204)


@router.post("/link", response_model=LinkOut)
async def link_memories(body: LinkIn, s: State, tenant: Tenant) -> Any:
    """Link two of your memories (idempotent: the same triple is re-weighted, not duplicated)."""
    return await memory.link(s.db, tenant, body.src, body.dst, body.rel, body.weight, s.embedder)


@router.post("/link/batch", response_model=LinkBatchOut)
async def link_batch(body: LinkBatchIn, s: State, tenant: Tenant) -> Any:
    """Up to 1,000 links in one transaction: all are made, or none."""
    rows = await memory.link_many(s.db, tenant, [(x.src, x.dst, x.rel, x.weight) for x in body.links],
                                  embedder=s.embedder)
    return {"links": rows}


@router.get("/{id}/links", response_model=LinksOut)
async def memory_links(id: UUID, s: State, tenant: Tenant) -> Any:
    return await memory.links_of(s.db, tenant, id)


@router.post("/forget", response_model=ForgetOut)
async def forget_memories(body: ForgetIn, s: State, tenant: Tenant) -> Any:
    """Delete every memory matching all given criteria; the receipt id records it."""
    receipt, deleted = await memory.forget(
        s.db, tenant, namespace=body.namespace, subject=body.subject, before=body.before
    )
    return {"receipt_id": receipt, "deleted": deleted}
