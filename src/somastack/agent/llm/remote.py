"""HTTP transport for remote providers: JSON posts and SSE streams, with failures made typed.

Every transport failure, timeout or non-2xx answer becomes ProviderUnavailable, the error the
fallback chain moves on from; the detail keeps the status and the start of the body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from somastack.agent.llm.sse import SSEEvent, sse_events
from somastack.errors import ProviderUnavailable


class RemoteEndpoint:
    """One provider's base URL, headers and connection pool."""

    def __init__(self, provider: str, base_url: str, headers: dict[str, str], timeout_s: float
                 ) -> None:
        self.provider = provider
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                         timeout=httpx.Timeout(timeout_s, connect=10.0))

    def _failed(self, detail: str) -> ProviderUnavailable:
        return ProviderUnavailable(f"{self.provider}: {detail}", field="provider")

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON, return the JSON answer."""
        try:
            resp = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 300:
            raise self._failed(f"HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            answer = resp.json()
        except json.JSONDecodeError as exc:
            raise self._failed(f"answer is not JSON: {resp.text[:200]}") from exc
        if not isinstance(answer, dict):
            raise self._failed(f"answer is not an object: {resp.text[:200]}")
        return answer

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        """POST JSON and yield the answer's server-sent events."""
        try:
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code >= 300:
                    text = (await resp.aread()).decode(errors="replace")
                    raise self._failed(f"HTTP {resp.status_code}: {text[:300]}")
                yield sse_events(resp.aiter_lines())
        except httpx.HTTPError as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def event_json(event: SSEEvent, provider: str) -> dict[str, Any]:
    """The JSON payload of one SSE event; a broken one is a provider failure."""
    try:
        data = json.loads(event.data)
    except json.JSONDecodeError as exc:
        raise ProviderUnavailable(f"{provider}: stream event is not JSON: {event.data[:200]}",
                                  field="provider") from exc
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"{provider}: stream event is not an object", field="provider")
    return data
