"""FastAPI dependencies: the app's shared state and the verified caller.

Every /v1 route depends on `caller` (directly or through `Tenant`): the credential is verified,
its tenant becomes the request's tenant (never a header or body), the route's scope is checked,
the tenant's rate limit applied, input holding NUL refused and, for memory writes, the policy
decision point consulted. Each refusal is audited. Routers declare extra scopes with
`scoped("agent:run")`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Security
from fastapi.security import SecurityScopes

from somastack.api.metrics import Metrics
from somastack.brain.embed import AsyncEmbedder
from somastack.config import Settings
from somastack.errors import ConstitutionInvalid, InvalidInput, PolicyDenied, SomaError
from somastack.governance import auth, policy
from somastack.governance.principal import ADMIN, Principal
from somastack.governance.runtime import Governance
from somastack.store import Database

TRACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Default scopes by the domain after /v1/ (read for GET/HEAD, write otherwise); other domains
# need `admin` unless their routes declare scopes with `scoped(...)`: deny by default.
DOMAIN_SCOPES = {"memory": ("memory:read", "memory:write")}
READ_POSTS = {"/v1/memory/recall"}
POLICY_ACTIONS = {"DELETE": "memory.delete", "/v1/memory/forget": "memory.delete"}
AUTHENTICATED = "authenticated"  # pseudo-scope: any valid credential of any tenant
JSON_NUL = b"\\u0000"  # how a JSON body spells NUL (a raw NUL byte is not JSON at all)


@dataclass
class AppState:
    settings: Settings
    db: Database
    embedder: AsyncEmbedder
    metrics: Metrics
    governance: Governance


async def state(request: Request) -> AppState:
    # async, like `tenant`: FastAPI runs a plain `def` dependency on a worker thread per request
    return request.app.state.soma  # type: ignore[no-any-return]


State = Annotated[AppState, Depends(state)]


def trace_id(request: Request) -> str:
    """The caller's X-Trace-Id when well-formed, else a new one (kept for the request)."""
    known: str | None = getattr(request.state, "soma_trace", None)
    if known is None:
        given = request.headers.get("x-trace-id", "")
        known = request.state.soma_trace = given if TRACE_RE.fullmatch(given) else uuid.uuid4().hex
    return known


def route_of(request: Request) -> str:
    """'METHOD /path/template' of the matched route (the rate-limit and audit resource)."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


def default_scopes(method: str, path: str) -> list[str]:
    parts = path.split("/")
    read, write = DOMAIN_SCOPES.get(parts[2] if len(parts) > 2 else "", (ADMIN, ADMIN))
    return [read if method in ("GET", "HEAD") or path in READ_POSTS else write]


async def principal(
    request: Request, s: State,
    authorization: Annotated[str | None, Header()] = None,
    x_soma_tenant: Annotated[str | None, Header()] = None,
) -> Principal:
    """The verified caller; 401 without a valid credential, 403 for another tenant's header."""
    gov, trace, route = s.governance, trace_id(request), route_of(request)
    if gov.failure is not None:
        raise ConstitutionInvalid(f"the server is failing closed: {gov.failure}")
    try:
        who = await auth.authenticate(s.db, gov, authorization)
    except SomaError as exc:
        raise await auth.refuse(s.db, exc, actor="anonymous", tenant_id=None, action="auth.deny",
                                resource=route, trace_id=trace) from None
    try:
        auth.check_tenant_header(who, x_soma_tenant)
    except SomaError as exc:
        raise await auth.refuse(s.db, exc, actor=who.actor, tenant_id=who.tenant_id,
                                action="auth.deny", resource=route, trace_id=trace) from None
    return who


async def _memory_resource(request: Request, route: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"route": route}
    body = await request.body()
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            return resource
        if isinstance(parsed, dict) and isinstance(parsed.get("namespace"), str):
            resource["namespace"] = parsed["namespace"]
    if "id" in request.path_params:
        resource["id"] = str(request.path_params["id"])
    return resource


def _nul_field(document: Any) -> str | None:
    """The field ('items[0].content') of the first string, or object key, holding NUL."""
    todo: deque[tuple[str, Any]] = deque([("", document)])
    while todo:  # breadth first, without recursion: a body may nest as deep as JSON parses
        at, value = todo.popleft()
        if isinstance(value, str) and "\x00" in value:
            return at or "body"
        if isinstance(value, dict):
            if any("\x00" in k for k in value):
                return at or "body"
            todo.extend((f"{at}.{k}" if at else k, v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((f"{at}[{i}]", v) for i, v in enumerate(value))
    return None


async def _refuse_nul(request: Request) -> None:
    """InvalidInput naming the parameter or body field that holds NUL: PostgreSQL stores it in
    neither text nor jsonb, so it must be refused before any query (not fail one, a 500)."""
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        if "\x00" in str(value):
            raise InvalidInput("must not contain the NUL character", field=name)
    body = await request.body()
    if JSON_NUL in body:  # rare: only then is the body parsed a second time
        try:
            at = _nul_field(json.loads(body))
        except ValueError:
            return
        if at is not None:
            raise InvalidInput("must not contain the NUL character (\\u0000)", field=at)


def _policy_action(method: str, path: str) -> str | None:
    if not path.startswith("/v1/memory") or method in ("GET", "HEAD") or path in READ_POSTS:
        return None
    return POLICY_ACTIONS.get(path) or POLICY_ACTIONS.get(method) or "memory.write"


async def caller(
    request: Request, security_scopes: SecurityScopes, s: State,
    who: Annotated[Principal, Depends(principal)],
) -> Principal:
    """The caller, admitted: scopes held, within the rate limit, input storable, and allowed by
    policy."""
    gov, trace, route = s.governance, trace_id(request), route_of(request)
    path = route.split(" ", 1)[1]
    try:
        required = security_scopes.scopes or default_scopes(request.method, path)
        auth.check_scopes(who, [r for r in required if r != AUTHENTICATED])
        await auth.check_rate(gov, who, route)
    except SomaError as exc:
        action = "rate.deny" if exc.status == 429 else "scope.deny"
        raise await auth.refuse(s.db, exc, actor=who.actor, tenant_id=who.tenant_id, action=action,
                                resource=route, trace_id=trace) from None
    await _refuse_nul(request)
    policy_action = _policy_action(request.method, path)
    if policy_action is not None:
        decision = await policy.authorize(s.db, gov.rego, gov.constitution, policy.Request(
            subject=who, action=policy_action, resource=await _memory_resource(request, route),
            trace_id=trace))
        if not decision.allow:
            raise PolicyDenied("; ".join(decision.reasons), field="Authorization")
    return who


async def tenant(who: Annotated[Principal, Security(caller)]) -> str:
    """The caller's tenant: always the credential's, never a header or body."""
    return who.tenant_id


def scoped(*scopes: str) -> Any:
    """`Annotated[Principal, scoped("agent:run")]`: the admitted caller holding these scopes."""
    return Security(caller, scopes=list(scopes))


Caller = Annotated[Principal, Security(caller)]
Authenticated = Annotated[Principal, Security(caller, scopes=[AUTHENTICATED])]
Tenant = Annotated[str, Security(tenant)]
