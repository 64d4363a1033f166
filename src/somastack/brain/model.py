"""Plain dataclasses of the memory domain (the API converts its Pydantic models to these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

KINDS = ("episodic", "semantic", "procedural")


@dataclass
class MemoryDraft:
    """What a caller asks us to remember."""

    namespace: str
    content: str
    kind: str = "episodic"
    key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    importance: float = 0.5
    event_time: datetime | None = None
    expires_at: datetime | None = None
    source: str | None = None
    trace_id: str | None = None
    embedding: list[float] | None = None  # precomputed (import), must come with `embedder`
    embedder: str | None = None


@dataclass
class Written:
    """The outcome of one remembered item: its id and what happened."""

    id: UUID
    status: str  # created | updated | merged


@dataclass
class RecallFilters:
    kinds: list[str] | None = None
    tags: list[str] | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    metadata: dict[str, Any] | None = None

    def narrows(self) -> bool:
        """Whether any filter is set."""
        return any(v is not None and v != [] and v != {} for v in (
            self.kinds, self.tags, self.time_from, self.time_to, self.metadata))


@dataclass
class RecallQuery:
    text: str
    namespace: str | None = None
    top_k: int = 10
    filters: RecallFilters = field(default_factory=RecallFilters)
    include_scores: bool = True
    ablate: list[str] = field(default_factory=list)


MEMORY_COLUMNS = (
    "id, namespace, key, content, kind, metadata, tags, importance, event_time, created_at, "
    "updated_at, expires_at, source, trace_id, content_hash, embedder"
)
LIVE = "(expires_at IS NULL OR expires_at > now())"
LIVE_M = "(m.expires_at IS NULL OR m.expires_at > now())"  # the same, for queries aliasing memories m
