"""/v1/brain: context bundles (evaluate), learning from feedback, weights and rollback, bridge plans.

Reading routes need `memory:read`, routes that change what recall learns need `memory:write`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, Field, StrictStr, StringConstraints, field_validator

from somastack.api.deps import State, scoped
from somastack.api.memory_schemas import MemoryOut, Namespace, Strict
from somastack.brain import bridge, context, feedback, weights
from somastack.brain.wm import WorkingMemoryStore, open_working_memory
from somastack.governance.principal import Principal

Reader = Annotated[Principal, scoped("memory:read")]
Writer = Annotated[Principal, scoped("memory:write")]
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Text = Annotated[StrictStr, StringConstraints(min_length=1, max_length=4096)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the working-memory store after the app's own lifespan opened the database."""
    s = app.state.soma
    app.state.brain_wm = open_working_memory(s.settings, s.db)
    try:
        yield
    finally:
        await app.state.brain_wm.close()


router = APIRouter(prefix="/v1/brain", tags=["brain"], lifespan=lifespan)


def working_memory(request: Request) -> WorkingMemoryStore:
    return request.app.state.brain_wm  # type: ignore[no-any-return]


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v


class EvaluateIn(Strict):
    session_id: SessionId
    query: Text
    namespace: Namespace | None = Field(default=None, description="default: all namespaces")
    token_budget: int = Field(default=1024, ge=16, le=131072)
    top_k: int = Field(default=10, ge=1, le=100)
    density: bool | None = Field(default=None, description="density confidence; default: server setting")
    include_working_memory: bool = True
    observations: list[Text] = Field(default_factory=list, max_length=16,
                                     description="new items for the session's working memory")

    _query = field_validator("query")(_not_blank)


class BundleMemoryOut(MemoryOut):
    score: float
    score_breakdown: dict[str, float]
    confidence: float | None = Field(description="density-matrix confidence in [0, 1]; null: off/none")
    cited: bool = Field(description="the prompt cites it")


class WorkingItemOut(BaseModel):
    key: str
    memory_id: str | None
    content: str
    source: str
    hits: int
    weight: float


class EvaluateOut(BaseModel):
    memories: list[BundleMemoryOut]
    working_memory: list[WorkingItemOut]
    prompt: str
    prompt_tokens: int
    tokenizer: str
    weights: dict[str, float]
    weights_version: int
    trace_id: UUID
    timings_ms: dict[str, float]


class FeedbackIn(Strict):
    trace_id: UUID
    used_ids: list[UUID] = Field(default_factory=list, max_length=500)
    reward: float = Field(ge=-1, le=1, description="how well the bundle served, −1 … 1")


class FeedbackOut(BaseModel):
    trace_id: UUID
    weights: dict[str, float]
    version: int
    previous_version: int
    density_updated: bool
    links_updated: int


class WeightsVersionOut(BaseModel):
    version: int
    weights: dict[str, float]
    reason: str
    created_at: datetime | None
    trace_id: UUID | None


class WeightsOut(BaseModel):
    current: WeightsVersionOut
    bounds: dict[str, tuple[float, float]]
    history: list[WeightsVersionOut]


class RollbackIn(Strict):
    version: int = Field(ge=0, description="0 restores the defaults")


class PlanIn(Strict):
    from_: Text = Field(alias="from", description="cue text, or a memory id")
    to: Text = Field(description="cue text, or a memory id")
    namespace: Namespace | None = None
    max_hops: int = Field(default=4, ge=1, le=8)

    _cues = field_validator("from_", "to")(_not_blank)


class PlanStepOut(BaseModel):
    id: UUID
    content: str
    namespace: str
    event_time: datetime | None
    via: str
    step_cost: float


class PlanPathOut(BaseModel):
    memories: list[PlanStepOut]
    cost: float
    hops: int
    mass: float


class PlanOut(BaseModel):
    paths: list[PlanPathOut]
    nodes: int
    transport: dict[str, Any] | None


def _cue(text: str) -> bridge.Cue:
    try:
        return bridge.Cue(memory_id=UUID(text.strip()))
    except ValueError:
        return bridge.Cue(text=text)


@router.post("/evaluate", response_model=EvaluateOut)
async def evaluate(body: EvaluateIn, request: Request, s: State, who: Reader) -> Any:
    """A context bundle: ranked memories, the session's working memory, a cited prompt within the
    token budget, the weights used, and the trace id to send feedback on."""
    bundle = await context.evaluate(
        s.db, s.embedder, s.settings, working_memory(request), who.tenant_id,
        context.EvaluateRequest(session_id=body.session_id, query=body.query,
                                token_budget=body.token_budget, namespace=body.namespace,
                                top_k=body.top_k, density=body.density,
                                include_working_memory=body.include_working_memory,
                                observations=body.observations))
    return bundle.__dict__


@router.post("/feedback", response_model=FeedbackOut)
async def give_feedback(body: FeedbackIn, s: State, who: Writer) -> Any:
    """Learn from a trace: a projected gradient step on θ, ρ and link conductance (all or nothing).

    Traces are kept SOMA_BRAIN_TRACE_DAYS days (default 30); feedback on an older one is 404."""
    return (await feedback.feedback(s.db, s.settings, who.tenant_id, body.trace_id,
                                    list(dict.fromkeys(body.used_ids)), body.reward)).__dict__


@router.get("/weights", response_model=WeightsOut)
async def get_weights(s: State, who: Reader,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> Any:
    """The current fusion weights θ, their bounds and the newest versions first."""
    bounds = weights.bounds_from(s.settings)
    async with s.db.tenant(who.tenant_id) as conn:
        current = await weights.current(conn, who.tenant_id, bounds)
        past = await weights.history(conn, who.tenant_id, limit)
    return {"current": current.__dict__, "bounds": bounds, "history": [v.__dict__ for v in past]}


@router.post("/weights/rollback", response_model=WeightsVersionOut)
async def rollback_weights(body: RollbackIn, s: State, who: Writer) -> Any:
    """Restore the θ of an earlier version (written again as the newest version)."""
    async with s.db.tenant(who.tenant_id) as conn:
        v = await weights.rollback(conn, who.tenant_id, body.version, weights.bounds_from(s.settings))
    return v.__dict__


@router.post("/plan", response_model=PlanOut)
async def plan(body: PlanIn, s: State, who: Reader) -> Any:
    """Ranked paths of memories bridging two cues (links at FRGO cost + similarity, Sinkhorn)."""
    st = s.settings
    return await bridge.plan(
        s.db, s.embedder, who.tenant_id, _cue(body.from_), _cue(body.to), namespace=body.namespace,
        max_hops=body.max_hops, per_cue=st.plan_candidates, max_nodes=st.plan_max_nodes,
        rule=feedback.conductance_rule(st))
