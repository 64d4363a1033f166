"""/v1/personas: create (tenant admin), list and get (admin, or a session for its own persona)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from somastack.agent import personas
from somastack.agent.llm import PROVIDERS
from somastack.api.deps import State, scoped, trace_id
from somastack.errors import NotFound
from somastack.governance import audit
from somastack.governance.principal import ADMIN, Principal

router = APIRouter(prefix="/v1/personas", tags=["agent"])
Writer = Annotated[Principal, scoped(ADMIN)]
Reader = Annotated[Principal, scoped("agent:run")]
Ref = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$",
                          description="a persona hash (64 hex) or name (its newest version)")]


class PersonaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=personas.NAME_RE.pattern, description="1-64 of a-z, 0-9, _ -")
    system_prompt: str = Field(min_length=1, max_length=personas.SYSTEM_PROMPT_MAX)
    providers: list[str] = Field(default_factory=lambda: ["local"], min_length=1,
                                 description=f"fallback chain, any of: {', '.join(PROVIDERS)}")
    tools: list[str] = Field(default_factory=list, max_length=personas.TOOLS_MAX,
                             description="default tools (checked when a turn runs)")
    namespace: str = Field(default="default", pattern=personas.NAMESPACE_RE.pattern,
                           description="the memory namespace the persona reads and writes")


class PersonaOut(BaseModel):
    tenant: str
    hash: str = Field(description="SHA-256 of the canonical JSON of the persona document")
    name: str
    system_prompt: str
    providers: list[str]
    tools: list[str]
    namespace: str
    created_at: datetime | None


class PersonaPage(BaseModel):
    items: list[PersonaOut]
    next_cursor: str | None


@router.post("", response_model=PersonaOut, status_code=201,
             responses={200: {"model": PersonaOut, "description": "the persona already existed"}})
async def create_persona(body: PersonaIn, request: Request, response: Response, s: State,
                         who: Writer) -> Any:
    """Store a persona version; the same document again answers 200 with the same hash."""
    async with s.db.system() as conn:  # owner rights: the audit row commits with the persona
        persona, created = await personas.save_persona(conn, who.tenant_id, body.model_dump(),
                                                       who.actor)
        if created:
            await audit.append(conn, audit.AuditEvent(
                actor=who.actor, tenant_id=who.tenant_id, action="persona.create",
                resource=f"persona:{persona.hash}", decision="allow", trace_id=trace_id(request),
                payload=persona.doc()))
    if not created:
        response.status_code = 200
    return asdict(persona)


@router.get("", response_model=PersonaPage)
async def list_personas(
    s: State, who: Reader,
    name: Annotated[str | None, Query(pattern=personas.NAME_RE.pattern)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> Any:
    """Persona versions in creation order; pass `next_cursor` back as `cursor` for the next page."""
    if who.kind == "session":
        own = await _session_persona(s, who)
        return {"items": [asdict(own)] if own and name in (None, own.name) else [],
                "next_cursor": None}
    page, nxt = await personas.list_personas(s.db, who.tenant_id, limit, cursor, name=name)
    return {"items": [asdict(p) for p in page], "next_cursor": nxt}


@router.get("/{ref}", response_model=PersonaOut)
async def get_persona(ref: Ref, s: State, who: Reader) -> Any:
    """One persona by hash, or the newest version of a name."""
    if who.kind != "session":
        return asdict(await personas.get_persona(s.db, who.tenant_id, ref))
    own = await _session_persona(s, who)
    if own is None or ref not in (own.hash, own.name):
        raise NotFound(f"persona {ref!r} not found", field="persona")
    return asdict(own)


async def _session_persona(s: State, who: Principal) -> personas.Persona | None:
    """A session token sees only the persona version it was minted for."""
    ref = str(who.claims.get("persona_hash", ""))
    if not personas.HASH_RE.fullmatch(ref):
        return None
    async with s.db.tenant(who.tenant_id) as conn:
        return await personas.find_persona(conn, who.tenant_id, ref)
