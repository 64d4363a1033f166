"""The memory API's contract: request and response models (unknown fields are refused)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, cast
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints
from pydantic_core import to_json

from somastack.api.when import When
from somastack.brain.model import MemoryDraft, RecallFilters, RecallQuery
from somastack.brain.recall import RecallResult

Namespace = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")]
Kind = Literal["episodic", "semantic", "procedural"]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Scalar = StrictStr | int | float | bool | None
TTL_MAX_S = 100 * 365 * 24 * 3600  # a century; far beyond it the expiry date overflows
# A number of a unit vector. Unbounded, NaN and ∞ are refused by pgvector (a 500) and 2**70 is
# stored, then overflows every recall whose candidates include it.
Component = Annotated[float, Field(ge=-1, le=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RememberIn(Strict):
    content: StrictStr = Field(description="the text to remember (≤ 32 KB of UTF-8)")
    namespace: Namespace | None = Field(default=None, description="default: 'default'")
    kind: Kind = "episodic"
    key: Short | None = Field(default=None, description="client key: upsert on namespace+key")
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    importance: float = Field(default=0.5, ge=0, le=1)
    event_time: When | None = None
    ttl_s: int | None = Field(default=None, gt=0, le=TTL_MAX_S,
                              description="expire after this many seconds (at most a century)")
    expires_at: When | None = None
    source: Short | None = None
    trace_id: Short | None = None
    embedding: list[Component] | None = Field(
        default=None, description="precomputed unit vector (import); each number in [-1, 1]")
    embedder: Short | None = Field(default=None, description="id of the embedder of `embedding`")

    def draft(self, default_namespace: str = "default") -> MemoryDraft:
        expires = self.expires_at
        if self.ttl_s is not None:
            expires = datetime.now(UTC) + timedelta(seconds=self.ttl_s)
        return MemoryDraft(
            namespace=self.namespace or default_namespace, content=self.content, kind=self.kind,
            key=self.key, metadata=self.metadata, tags=self.tags, importance=self.importance,
            event_time=self.event_time, expires_at=expires, source=self.source,
            trace_id=self.trace_id, embedding=self.embedding, embedder=self.embedder,
        )


class RememberBatchIn(Strict):
    items: list[RememberIn] = Field(min_length=1, max_length=1000)
    namespace: Namespace | None = Field(default=None, description="for items that name none")


class WrittenOut(BaseModel):
    id: UUID
    status: Literal["created", "updated", "merged"]


class BatchOut(BaseModel):
    items: list[WrittenOut]
    created: int
    updated: int
    merged: int


class MemoryOut(BaseModel):
    id: UUID
    namespace: str
    key: str | None
    content: str
    kind: Kind
    metadata: dict[str, Any]
    tags: list[str]
    importance: float
    event_time: datetime | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    source: str | None
    trace_id: str | None
    content_hash: str
    embedder: str
    embedding: list[float] | None = Field(default=None, exclude_if=lambda v: v is None)


class PageOut(BaseModel):
    items: list[MemoryOut]
    next_cursor: str | None


class FiltersIn(Strict):
    kind: list[Kind] | None = None
    tags: list[Tag] | None = None
    time_from: When | None = None
    time_to: When | None = None
    metadata: dict[str, Scalar] | None = Field(default=None, description="equality on keys")


class RecallIn(Strict):
    query: Annotated[StrictStr, StringConstraints(min_length=1, max_length=4096)]
    namespace: Namespace | None = Field(default=None, description="default: all namespaces")
    top_k: int = Field(default=10, ge=1, le=100)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    include_scores: bool = True
    ablate: list[str] = Field(default_factory=list, description="features to switch off (evaluation)")

    def to_query(self) -> RecallQuery:
        f = self.filters
        # list is invariant, so list[Kind] is not a list[str] to mypy; the values are strs
        kinds = cast(list[str] | None, f.kind)
        return RecallQuery(
            text=self.query, namespace=self.namespace, top_k=self.top_k,
            filters=RecallFilters(kinds=kinds, tags=f.tags, time_from=f.time_from,
                                  time_to=f.time_to, metadata=f.metadata),
            include_scores=self.include_scores, ablate=self.ablate,
        )


class EvidenceOut(BaseModel):
    memory: MemoryOut
    score: float
    score_breakdown: dict[str, float]
    provenance: dict[str, Any]


class RecallOut(BaseModel):
    evidence: list[EvidenceOut]
    candidates: int
    timings_ms: dict[str, float]


def recall_json(result: RecallResult) -> bytes:
    """The RecallOut document of a recall, serialised straight from the result.

    The rows come from recall's own query with exactly MemoryOut's columns: validating them into
    the models again only costs time on the hottest route. tests/api/test_memory_api.py checks
    that the answer is exactly RecallOut's own serialisation.
    """
    return to_json({"evidence": result.evidence, "candidates": result.candidates,
                    "timings_ms": result.timings_ms})


class PatchIn(Strict):
    content: StrictStr | None = None
    kind: Kind | None = None
    metadata: dict[str, Any] | None = None
    tags: list[Tag] | None = Field(default=None, max_length=32)
    importance: float | None = Field(default=None, ge=0, le=1)
    event_time: When | None = None
    expires_at: When | None = None
    ttl_s: int | None = Field(default=None, gt=0, le=TTL_MAX_S)


class LinkIn(Strict):
    src: UUID
    dst: UUID
    rel: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "related"
    weight: float = Field(default=1.0, ge=0, le=1)


class LinkBatchIn(Strict):
    links: list[LinkIn] = Field(min_length=1, max_length=1000)


class LinkOut(BaseModel):
    src: UUID
    dst: UUID
    rel: str
    weight: float
    created_at: datetime


class LinkBatchOut(BaseModel):
    links: list[LinkOut]


class LinksOut(BaseModel):
    outgoing: list[LinkOut]
    incoming: list[LinkOut]


class ForgetIn(Strict):
    namespace: Namespace | None = None
    subject: dict[str, Scalar] | None = Field(default=None, description="metadata to match")
    before: When | None = Field(default=None, description="only memories created before this")


class ForgetOut(BaseModel):
    receipt_id: UUID
    deleted: int
