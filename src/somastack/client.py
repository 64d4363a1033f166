"""Python client for the SomaStack API, sync (`Client`) and async (`AsyncClient`).

Both build the same `_Call`s, so the two stay identical verb for verb:

    from somastack import Client
    soma = Client("http://127.0.0.1:8080", api_key="soma_…")
    soma.remember("Ada prefers tea", namespace="people")
    hits = soma.recall("what does Ada drink?")["evidence"]
"""

from __future__ import annotations

import builtins  # annotations after a class's `list` method would name the method, not the type
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pydantic_core import to_jsonable_python


class SomaAPIError(Exception):
    """A problem+json answer: `status`, `type`, `detail` and the `field` at fault."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type = problem.get("type", "")
        self.field = problem.get("field")
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


@dataclass
class _Call:
    """A request. Dates, times and UUIDs in its body and parameters are sent as ISO 8601 and
    text, so `remember(…, event_time=datetime(2023, 5, 14, tzinfo=UTC))` just works."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.json = to_jsonable_python(self.json)
        if isinstance(self.params, dict):
            self.params = to_jsonable_python(self.params)


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _result(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text}
        raise SomaAPIError(resp.status_code, body)
    return None if resp.status_code == 204 else resp.json()


class _Calls:
    """The API's verbs as request descriptions."""

    @staticmethod
    def remember(content: str, **fields: Any) -> _Call:
        return _Call("POST", "/v1/memory/remember", _clean({"content": content, **fields}))

    @staticmethod
    def remember_batch(items: list[dict[str, Any]], namespace: str | None = None) -> _Call:
        return _Call("POST", "/v1/memory/remember/batch", _clean({"items": items,
                                                                  "namespace": namespace}))

    @staticmethod
    def recall(query: str, **fields: Any) -> _Call:
        return _Call("POST", "/v1/memory/recall", _clean({"query": query, **fields}))

    @staticmethod
    def get(memory_id: str, include_embedding: bool = False) -> _Call:
        return _Call("GET", f"/v1/memory/{memory_id}",
                     params={"include_embedding": include_embedding} if include_embedding else {})

    @staticmethod
    def update(memory_id: str, **changes: Any) -> _Call:
        return _Call("PATCH", f"/v1/memory/{memory_id}", changes)

    @staticmethod
    def delete(memory_id: str) -> _Call:
        return _Call("DELETE", f"/v1/memory/{memory_id}")

    @staticmethod
    def list(**params: Any) -> _Call:
        return _Call("GET", "/v1/memory", params=_clean(params))

    @staticmethod
    def link(src: str, dst: str, rel: str = "related", weight: float = 1.0) -> _Call:
        return _Call("POST", "/v1/memory/link",
                     {"src": str(src), "dst": str(dst), "rel": rel, "weight": weight})

    @staticmethod
    def link_batch(links: builtins.list[dict[str, Any]]) -> _Call:
        return _Call("POST", "/v1/memory/link/batch", {"links": links})

    @staticmethod
    def links(memory_id: str) -> _Call:
        return _Call("GET", f"/v1/memory/{memory_id}/links")

    @staticmethod
    def forget(**criteria: Any) -> _Call:
        return _Call("POST", "/v1/memory/forget", _clean(criteria))

    @staticmethod
    def evaluate(session_id: str, query: str, **fields: Any) -> _Call:
        return _Call("POST", "/v1/brain/evaluate",
                     _clean({"session_id": session_id, "query": query, **fields}))

    @staticmethod
    def feedback(trace_id: str, used_ids: Sequence[str], reward: float) -> _Call:
        return _Call("POST", "/v1/brain/feedback", {"trace_id": str(trace_id),
                                                    "used_ids": [str(u) for u in used_ids],
                                                    "reward": reward})

    @staticmethod
    def weights(limit: int | None = None) -> _Call:
        return _Call("GET", "/v1/brain/weights", params=_clean({"limit": limit}))

    @staticmethod
    def rollback_weights(version: int) -> _Call:
        return _Call("POST", "/v1/brain/weights/rollback", {"version": version})

    @staticmethod
    def plan(source: str, target: str, **fields: Any) -> _Call:
        return _Call("POST", "/v1/brain/plan", _clean({"from": str(source), "to": str(target), **fields}))

    @staticmethod
    def mint_session(persona_hash: str, *, tools: Sequence[str] = (), memory: str = "read",
                     tokens: int = 100_000, tools_per_min: int = 60, cost_cents: int | None = None,
                     ttl_s: int = 3600, policy_hash: str = "default") -> _Call:
        budgets = _clean({"tokens": tokens, "tools_per_min": tools_per_min,
                          "cost_cents": cost_cents})
        return _Call("POST", "/v1/session/mint", {
            "persona_hash": persona_hash, "policy_hash": policy_hash, "ttl_s": ttl_s,
            "budgets": budgets, "allow": {"tools": list(tools), "memory": memory}})

    @staticmethod
    def turn_body(session_id: str, text: str, **options: Any) -> dict[str, Any]:
        calls = options.pop("tool_calls", None)
        inputs = _clean({"text": text, "tool_calls": calls})
        return to_jsonable_python({"session_id": session_id, "inputs": inputs, **_clean(options)})

    @staticmethod
    def create_persona(name: str, system_prompt: str, **fields: Any) -> _Call:
        return _Call("POST", "/v1/personas",
                     _clean({"name": name, "system_prompt": system_prompt, **fields}))

    @staticmethod
    def personas(**params: Any) -> _Call:
        return _Call("GET", "/v1/personas", params=_clean(params))

    @staticmethod
    def persona(ref: str) -> _Call:
        return _Call("GET", f"/v1/personas/{ref}")

    @staticmethod
    def usage(start: str | datetime | None = None, end: str | datetime | None = None,
              group_by: Sequence[str] | None = None) -> _Call:
        return _Call("GET", "/v1/usage", params=_clean(
            {"from": start, "to": end, "group_by": ",".join(group_by) if group_by else None}))

    @staticmethod
    def ready() -> _Call:
        return _Call("GET", "/readyz")


def turn_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Turn events from SSE lines: each event's `data:` is one JSON object."""
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:])


def _headers(tenant: str | None, api_key: str | None) -> dict[str, str]:
    """Bearer credential (API key or session token); X-Soma-Tenant only asserts its tenant."""
    headers = {"X-Soma-Tenant": tenant} if tenant else {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class Client:
    """Blocking client. Every method returns the decoded JSON answer or raises SomaAPIError."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", *, tenant: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(tenant, api_key), timeout=timeout,
                                  transport=transport)

    @property
    def http(self) -> httpx.Client:
        """The underlying httpx client (base URL and credentials set), for raw requests."""
        return self._http

    def _do(self, call: _Call) -> Any:
        return _result(self._http.request(call.method, call.path, json=call.json,
                                          params=call.params))

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        """Any API call by method and path; the decoded answer or SomaAPIError."""
        return self._do(_Call(method, path, json, params or {}))

    def remember(self, content: str, **fields: Any) -> Any:
        return self._do(_Calls.remember(content, **fields))

    def remember_batch(self, items: list[dict[str, Any]], namespace: str | None = None) -> Any:
        return self._do(_Calls.remember_batch(items, namespace))

    def recall(self, query: str, **fields: Any) -> Any:
        return self._do(_Calls.recall(query, **fields))

    def get(self, memory_id: str, include_embedding: bool = False) -> Any:
        return self._do(_Calls.get(memory_id, include_embedding))

    def update(self, memory_id: str, **changes: Any) -> Any:
        return self._do(_Calls.update(memory_id, **changes))

    def delete(self, memory_id: str) -> None:
        self._do(_Calls.delete(memory_id))

    def list(self, **params: Any) -> Any:
        return self._do(_Calls.list(**params))

    def iter_memories(self, **params: Any) -> Iterator[dict[str, Any]]:
        """Every memory matching `params`, following the cursor page by page."""
        while True:
            page = self.list(**params)
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def link(self, src: str, dst: str, rel: str = "related", weight: float = 1.0) -> Any:
        return self._do(_Calls.link(src, dst, rel, weight))

    def link_batch(self, links: builtins.list[dict[str, Any]]) -> Any:
        return self._do(_Calls.link_batch(links))

    def links(self, memory_id: str) -> Any:
        return self._do(_Calls.links(memory_id))

    def forget(self, **criteria: Any) -> Any:
        return self._do(_Calls.forget(**criteria))

    def evaluate(self, session_id: str, query: str, **fields: Any) -> Any:
        """A context bundle (memories, working memory, cited prompt, trace_id) for the query."""
        return self._do(_Calls.evaluate(session_id, query, **fields))

    def feedback(self, trace_id: str, used_ids: Sequence[str], reward: float) -> Any:
        return self._do(_Calls.feedback(trace_id, used_ids, reward))

    def weights(self, limit: int | None = None) -> Any:
        return self._do(_Calls.weights(limit))

    def rollback_weights(self, version: int) -> Any:
        return self._do(_Calls.rollback_weights(version))

    def plan(self, source: str, target: str, **fields: Any) -> Any:
        """Ranked paths of memories from cue `source` to cue `target` (texts or memory ids)."""
        return self._do(_Calls.plan(source, target, **fields))

    def create_persona(self, name: str, system_prompt: str, **fields: Any) -> Any:
        """Store a persona (providers, tools, namespace optional); the answer carries its hash."""
        return self._do(_Calls.create_persona(name, system_prompt, **fields))

    def personas(self, **params: Any) -> Any:
        """A page of persona versions: {items, next_cursor} (params: name, limit, cursor)."""
        return self._do(_Calls.personas(**params))

    def persona(self, ref: str) -> Any:
        """One persona by hash, or the newest version of a name."""
        return self._do(_Calls.persona(ref))

    def usage(self, start: str | None = None, end: str | None = None,
              group_by: Sequence[str] | None = None) -> Any:
        """Usage summed over [start, end) (ISO times) per group (agent, session, minute, hour, day)."""
        return self._do(_Calls.usage(start, end, group_by))

    def mint_session(self, persona_hash: str, **options: Any) -> Any:
        """A session token for a persona: {jwt, jti (the session id), expires_in, kid}.

        Options: tools, memory ("none" | "read" | "readwrite"), tokens, tools_per_min,
        cost_cents, ttl_s, policy_hash.
        """
        return self._do(_Calls.mint_session(persona_hash, **options))

    def turn(self, session: dict[str, Any], text: str, *, idempotency_key: str | None = None,
             last_event_id: str | None = None, **options: Any) -> Iterator[dict[str, Any]]:
        """Run a turn with a minted session; yields its events as they stream.

        Options: allow ({tools, memory}), max_steps, tool_choice, max_tokens, tool_calls.
        """
        headers = _clean({"Authorization": f"Bearer {session['jwt']}",
                          "Idempotency-Key": idempotency_key, "Last-Event-ID": last_event_id})
        body = _Calls.turn_body(session["jti"], text, **options)
        with self._http.stream("POST", "/v1/turn", json=body, headers=headers,
                               timeout=httpx.Timeout(self._http.timeout.connect, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                _result(resp)
            yield from turn_events(resp.iter_lines())

    def turns(self, **params: Any) -> Any:
        """Stored turns, newest first: {items, next_before} (params: session_id, limit, before)."""
        return self._do(_Call("GET", "/v1/turns", params=_clean(params)))

    def get_turn(self, turn_id: str) -> Any:
        """One stored turn with all its events."""
        return self._do(_Call("GET", f"/v1/turns/{turn_id}"))

    def ready(self) -> Any:
        return self._do(_Calls.ready())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same verbs as Client, awaited."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", *, tenant: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(tenant, api_key),
                                       timeout=timeout, transport=transport)

    async def _do(self, call: _Call) -> Any:
        return _result(await self._http.request(call.method, call.path, json=call.json,
                                                params=call.params))

    async def remember(self, content: str, **fields: Any) -> Any:
        return await self._do(_Calls.remember(content, **fields))

    async def remember_batch(self, items: list[dict[str, Any]], namespace: str | None = None
                             ) -> Any:
        return await self._do(_Calls.remember_batch(items, namespace))

    async def recall(self, query: str, **fields: Any) -> Any:
        return await self._do(_Calls.recall(query, **fields))

    async def get(self, memory_id: str, include_embedding: bool = False) -> Any:
        return await self._do(_Calls.get(memory_id, include_embedding))

    async def update(self, memory_id: str, **changes: Any) -> Any:
        return await self._do(_Calls.update(memory_id, **changes))

    async def delete(self, memory_id: str) -> None:
        await self._do(_Calls.delete(memory_id))

    async def list(self, **params: Any) -> Any:
        return await self._do(_Calls.list(**params))

    async def iter_memories(self, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Every memory matching `params`, following the cursor page by page."""
        while True:
            page = await self.list(**params)
            for item in page["items"]:
                yield item
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    async def link(self, src: str, dst: str, rel: str = "related", weight: float = 1.0) -> Any:
        return await self._do(_Calls.link(src, dst, rel, weight))

    async def link_batch(self, links: builtins.list[dict[str, Any]]) -> Any:
        return await self._do(_Calls.link_batch(links))

    async def links(self, memory_id: str) -> Any:
        return await self._do(_Calls.links(memory_id))

    async def forget(self, **criteria: Any) -> Any:
        return await self._do(_Calls.forget(**criteria))

    async def evaluate(self, session_id: str, query: str, **fields: Any) -> Any:
        return await self._do(_Calls.evaluate(session_id, query, **fields))

    async def feedback(self, trace_id: str, used_ids: Sequence[str], reward: float) -> Any:
        return await self._do(_Calls.feedback(trace_id, used_ids, reward))

    async def weights(self, limit: int | None = None) -> Any:
        return await self._do(_Calls.weights(limit))

    async def rollback_weights(self, version: int) -> Any:
        return await self._do(_Calls.rollback_weights(version))

    async def plan(self, source: str, target: str, **fields: Any) -> Any:
        return await self._do(_Calls.plan(source, target, **fields))

    async def create_persona(self, name: str, system_prompt: str, **fields: Any) -> Any:
        return await self._do(_Calls.create_persona(name, system_prompt, **fields))

    async def personas(self, **params: Any) -> Any:
        return await self._do(_Calls.personas(**params))

    async def persona(self, ref: str) -> Any:
        return await self._do(_Calls.persona(ref))

    async def usage(self, start: str | None = None, end: str | None = None,
                    group_by: Sequence[str] | None = None) -> Any:
        return await self._do(_Calls.usage(start, end, group_by))

    async def mint_session(self, persona_hash: str, **options: Any) -> Any:
        return await self._do(_Calls.mint_session(persona_hash, **options))

    async def turn(self, session: dict[str, Any], text: str, *,
                   idempotency_key: str | None = None, last_event_id: str | None = None,
                   **options: Any) -> AsyncIterator[dict[str, Any]]:
        """Run a turn with a minted session; yields its events as they stream."""
        headers = _clean({"Authorization": f"Bearer {session['jwt']}",
                          "Idempotency-Key": idempotency_key, "Last-Event-ID": last_event_id})
        body = _Calls.turn_body(session["jti"], text, **options)
        async with self._http.stream("POST", "/v1/turn", json=body, headers=headers,
                                     timeout=httpx.Timeout(self._http.timeout.connect, read=None)
                                     ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _result(resp)
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:])

    async def ready(self) -> Any:
        return await self._do(_Calls.ready())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
