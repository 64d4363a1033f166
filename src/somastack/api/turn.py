"""POST /v1/turn (an SSE stream of the turn's events), GET /v1/turns[/{id}[/events]].

A turn needs a session token (POST /v1/session/mint) whose `jti` is the body's `session_id`.
The tools a turn may use are the body's `allow.tools` (default: the persona's tools), each of
which must be on the token's allow-list; its memory access is at most the token's.

The turn runs in its own task and feeds the response through a queue: when the client goes
away the response is closed, which cancels the task; the turn then records itself as
`cancelled` with the events produced so far. Every event carries `id: <turn_id>:<seq>`;
reconnecting (POST again with the same `Idempotency-Key`, or with `Last-Event-ID`, or
GET /v1/turns/{id}/events) replays the stored events after that id and follows the turn if it
is still running. The same Idempotency-Key never runs a turn twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from somastack.agent.personas import Persona, get_persona
from somastack.agent.tools import Decision
from somastack.agent.turn import Memory, Runtime, TurnSpec, drive
from somastack.agent.turns import (
    EventLog,
    Turn,
    events_after,
    get_turn,
    list_turns,
    open_later,
    open_turn,
    parse_event_id,
    request_hash,
    tail,
)
from somastack.api.deps import AppState, State, scoped, trace_id
from somastack.api.when import When
from somastack.errors import Forbidden, InvalidInput, NotFound, SomaError, ToolNotAllowed
from somastack.governance import policy, ratelimit
from somastack.governance.auth import refuse
from somastack.governance.principal import Principal
from somastack.store import Database

router = APIRouter(tags=["agent"])
Runner = Annotated[Principal, scoped("agent:run")]
MEMORY_LEVELS = ("none", "read", "readwrite")
TAIL_TIMEOUT_S = 600.0
PERSONA_CACHE = 10_000
_runtime_lock = asyncio.Lock()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientToolCall(Strict):
    tool: str = Field(min_length=1, max_length=128)
    arguments: dict[str, Any] = Field(description="checked against the tool's JSON Schema")


class TurnInputs(Strict):
    text: str = Field(min_length=1, max_length=8000, description="the user's message")
    tool_calls: list[ClientToolCall] = Field(
        default_factory=list, max_length=8,
        description="tool calls the client asks for; they replace the model's plan and go "
                    "through the same gates (allow-list, schema, policy, rate, budget)")


class TurnAllow(Strict):
    tools: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=32, description="tools this turn may call; default: the persona's")
    memory: Literal["none", "read", "readwrite"] | None = Field(
        default=None, description="memory access; default and ceiling: the session token's")


class TurnIn(Strict):
    session_id: str = Field(min_length=1, max_length=64, description="the session token's jti")
    inputs: TurnInputs
    allow: TurnAllow = Field(default_factory=TurnAllow)
    max_steps: int = Field(default=3, ge=0, le=8, description="most tool calls in this turn")
    tool_choice: Literal["auto", "required", "none"] = Field(
        default="auto", description="required: the plan must call at least one tool")
    max_tokens: int | None = Field(default=None, ge=1, le=8192,
                                   description="cap on every model call of this turn")


async def runtime(request: Request, s: AppState) -> Runtime:
    """The process's agent runtime, made on the first turn."""
    rt: Runtime | None = getattr(request.app.state, "agent_runtime", None)
    if rt is None:
        async with _runtime_lock:
            rt = getattr(request.app.state, "agent_runtime", None)
            if rt is None:
                rt = Runtime(s.settings, s.db, s.embedder)
                request.app.state.agent_runtime = rt
    return rt


def _session(who: Principal, session_id: str) -> dict[str, Any]:
    if who.kind != "session":
        raise Forbidden("a turn needs a session token: mint one with POST /v1/session/mint",
                        field="Authorization")
    if who.claims.get("jti") != session_id:
        raise NotFound(f"unknown session {session_id!r}: it must be the jti of the session "
                       "token in Authorization", field="session_id")
    return who.claims


def _allowed(body: TurnIn, claims: dict[str, Any], persona_tools: list[str], known: list[str]
             ) -> tuple[list[str], Memory]:
    token_allow = claims.get("allow") or {}
    token_tools = set(token_allow.get("tools") or [])
    if body.allow.tools is None:
        tools = [t for t in persona_tools if t in token_tools and t in known]
    else:
        for i, tool in enumerate(body.allow.tools):
            if tool not in known:
                raise InvalidInput(f"no tool named {tool!r}; known: {', '.join(known)}",
                                   field=f"allow.tools[{i}]")
            if tool not in token_tools:
                raise ToolNotAllowed(f"{tool!r} is not on the session token's allow-list",
                                     field=f"allow.tools[{i}]")
        tools = list(dict.fromkeys(body.allow.tools))
    for i, call in enumerate(body.inputs.tool_calls):
        if call.tool not in tools:
            raise ToolNotAllowed(f"{call.tool!r} is not among this turn's tools ({', '.join(tools)})",
                                 field=f"inputs.tool_calls[{i}].tool")
    ceiling = token_allow.get("memory", "none")
    memory = body.allow.memory or ceiling
    if MEMORY_LEVELS.index(memory) > MEMORY_LEVELS.index(ceiling):
        raise Forbidden(f"memory {memory!r} exceeds the session token's {ceiling!r}",
                        field="allow.memory")
    return tools, memory


def _authorize(s: AppState, who: Principal, trace: str, turn_id: str) -> Any:
    async def check(tool: str, args: dict[str, Any]) -> Decision:
        gov = s.governance
        decision, audited = await policy.decide(s.db, gov.rego, gov.constitution, policy.Request(
            subject=who, action="tool.call", resource={"tool": tool},
            context={"turn_id": turn_id}, trace_id=trace))
        return Decision(decision.allow, "; ".join(decision.reasons), audited=audited)
    return check


def _sse(event: dict[str, Any]) -> str:
    data = json.dumps(event, separators=(",", ":"), default=str, ensure_ascii=False)
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n"


def _stream(batches: AsyncIterator[list[dict[str, Any]]], turn: Turn) -> StreamingResponse:
    """SSE of the events; the events that are ready together go out in one write."""
    async def body() -> AsyncIterator[str]:
        async for batch in batches:
            yield "".join(_sse(event) for event in batch)

    return StreamingResponse(body(), media_type="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Turn-Id": turn.id,
        "X-Trace-Id": turn.trace_id})


async def _live(rt: Runtime, spec: TurnSpec, log: EventLog
                ) -> AsyncIterator[list[dict[str, Any]]]:
    """The turn's events as they happen (whatever is ready, together); closing this generator
    cancels the turn."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for event in drive(rt, spec, log):
                queue.put_nowait(event)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(produce(), name=f"turn {spec.turn_id}")
    try:
        done = False
        while not done:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            done = batch[-1] is None
            yield [e for e in batch if e is not None]
        await task
    finally:
        if not task.done():
            task.cancel()  # the client went away: the turn records itself as cancelled


async def _resume(db: Database, tenant: str, last_event_id: str, session_id: str
                  ) -> tuple[Turn, int]:
    turn_id, seq = parse_event_id(last_event_id)
    try:
        turn = await get_turn(db, tenant, turn_id)
    except NotFound:
        raise NotFound(f"no turn {turn_id!r} to resume", field="Last-Event-ID") from None
    if turn.session_id != session_id:
        raise NotFound(f"turn {turn_id!r} is not of session {session_id!r}", field="Last-Event-ID")
    return turn, seq


@router.post("/v1/turn", responses={200: {"content": {"text/event-stream": {}}}})
async def run_turn(
    body: TurnIn, request: Request, s: State, who: Runner,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    last_event_id: Annotated[str | None, Header(max_length=300)] = None,
) -> StreamingResponse:
    """Run one turn and stream its events (SSE): recall, plan, tool.call, tool.delta,
    tool.done, answer (deltas), verify, answer (final), remember, usage, error."""
    trace = trace_id(request)
    try:
        claims = _session(who, body.session_id)
    except SomaError as exc:
        raise await refuse(s.db, exc, actor=who.actor, tenant_id=who.tenant_id, action="turn.run",
                           resource=f"session:{body.session_id}", trace_id=trace) from None
    if last_event_id:
        turn, after = await _resume(s.db, who.tenant_id, last_event_id, body.session_id)
        return _stream(tail(s.db, turn, after, timeout_s=TAIL_TIMEOUT_S), turn)
    rt = await runtime(request, s)
    persona = await _persona(rt, s.db, who.tenant_id, claims["persona_hash"])
    registry = rt.registry(persona.namespace, _egress(s))
    try:
        tools, memory = _allowed(body, claims, persona.tools, registry.names())
    except SomaError as exc:
        raise await refuse(s.db, exc, actor=who.actor, tenant_id=who.tenant_id, action="turn.run",
                           resource=f"session:{body.session_id}", trace_id=trace) from None
    if not rt.has_chain(persona.providers):
        await asyncio.to_thread(rt.chain, persona.providers)  # loads a local model off the loop
    fresh = Turn(tenant=who.tenant_id, id=f"turn_{uuid.uuid4().hex[:20]}",
                 session_id=body.session_id, persona_hash=persona.hash, status="running",
                 inputs=body.inputs.model_dump(), trace_id=trace,
                 request_hash=request_hash(body.model_dump(mode="json")))
    opening: Awaitable[Any] | None = None
    if idempotency_key is None:  # nothing to replay: the row is written with the first events
        turn, opening = fresh, open_later(s.db, fresh)
    else:
        turn, created = await open_turn(s.db, fresh, idempotency_key)
        if not created:  # a retry: replay the first run, never run it again
            return _stream(tail(s.db, turn, 0, timeout_s=TAIL_TIMEOUT_S), turn)
    spec = TurnSpec(
        tenant=who.tenant_id, actor=who.actor, turn_id=turn.id, trace_id=trace,
        session_id=body.session_id, persona=persona, text=body.inputs.text, tools=tools,
        memory=memory, authorize=_authorize(s, who, trace, turn.id), max_steps=body.max_steps,
        tool_choice=body.tool_choice, tool_rate=_tool_rate(s, body.session_id, claims),
        egress_allow=_egress(s), max_tokens=body.max_tokens,
        calls=[c.model_dump() for c in body.inputs.tool_calls])
    return _stream(_live(rt, spec, EventLog(s.db, who.tenant_id, turn.id, trace, after=opening)),
                   turn)


async def _persona(rt: Runtime, db: Database, tenant: str, ref: str) -> Persona:
    """The session's persona; a persona is content-addressed (its hash), so it is cached."""
    key = (tenant, ref)
    persona = rt.personas.get(key)
    if persona is None:
        if len(rt.personas) >= PERSONA_CACHE:
            rt.personas.clear()
        persona = rt.personas[key] = await get_persona(db, tenant, ref)
    return persona


def _tool_rate(s: AppState, session_id: str, claims: dict[str, Any]) -> Any:
    """The session token's tools_per_min as a gate on the governance rate limiter."""
    per_min = (claims.get("budgets") or {}).get("tools_per_min")
    if per_min is None:
        return None
    limit = ratelimit.Limit(int(per_min), 60)

    async def gate() -> int | None:
        return await s.governance.limiter.hit(f"tools:session:{session_id}", limit)
    return gate


def _egress(s: AppState) -> list[str]:
    return list(s.governance.constitution.document["rules"].get("egress_allow") or [])


@router.get("/v1/turns/{turn_id}")
async def show_turn(turn_id: str, s: State, who: Runner) -> Any:
    """A stored turn with all its events, in order."""
    turn = await get_turn(s.db, who.tenant_id, turn_id)
    _own(who, turn)
    return {**turn.public(), "events": await events_after(s.db, turn, 0)}


@router.get("/v1/turns/{turn_id}/events", responses={200: {"content": {"text/event-stream": {}}}})
async def turn_events(
    turn_id: str, s: State, who: Runner,
    last_event_id: Annotated[str | None, Header(max_length=300)] = None,
    after: Annotated[int | None, Query(ge=0, description="replay events after this seq")] = None,
) -> StreamingResponse:
    """The turn's events as SSE from after `Last-Event-ID` (or `after`), following it live."""
    turn = await get_turn(s.db, who.tenant_id, turn_id)
    _own(who, turn)
    seq = after or 0
    if last_event_id:
        resumed, seq = parse_event_id(last_event_id)
        if resumed != turn_id:
            raise InvalidInput(f"the event id is of turn {resumed!r}", field="Last-Event-ID")
    return _stream(tail(s.db, turn, seq, timeout_s=TAIL_TIMEOUT_S), turn)


@router.get("/v1/turns")
async def turns(
    s: State, who: Runner,
    session_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[When | None, Query(description="cursor: created_at of the last row")] = None,
) -> Any:
    """The tenant's turns, newest first (a session token sees only its own session's)."""
    if who.kind == "session":
        session_id = who.claims.get("jti")
    rows = await list_turns(s.db, who.tenant_id, session_id, limit, before)
    next_cursor = rows[-1].created_at if len(rows) == limit else None
    return {"items": [r.public() for r in rows], "next_before": next_cursor}


def _own(who: Principal, turn: Turn) -> None:
    """A session token sees only its own session's turns (API keys see the tenant's)."""
    if who.kind == "session" and who.claims.get("jti") != turn.session_id:
        raise NotFound(f"turn {turn.id!r} not found", field="turn_id")

