"""The `openai` provider: any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp).

Native tool calls (`tools` / `tool_calls`), structured output through `response_format`
json_schema, streaming over SSE with usage in the last chunk (`stream_options.include_usage`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from somastack.agent.llm.remote import RemoteEndpoint, event_json
from somastack.agent.llm.structured import (
    check_request,
    parse_arguments,
    parse_json_output,
    with_usage,
)
from somastack.agent.llm.types import ChatRequest, Completion, Message, StreamChunk, ToolCall, Usage
from somastack.errors import ModelOutputInvalid


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our messages in the chat-completions wire format."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        elif m.tool_calls:
            out.append({"role": "assistant", "content": m.content or None, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in m.tool_calls]})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def openai_body(request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    """The chat-completions request body for this call."""
    body: dict[str, Any] = {
        "model": model,
        "messages": openai_messages(request.messages),
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stream": stream,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = request.stop
    if request.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in request.tools]
        body["tool_choice"] = request.tool_choice
    if request.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": request.json_schema}}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def parse_tool_calls(raw: list[dict[str, Any]]) -> list[ToolCall]:
    """Wire tool calls (arguments as a JSON string) as ToolCalls; bad JSON is ModelOutputInvalid."""
    return [ToolCall(id=c.get("id") or f"call_{i}", name=c["function"]["name"],
                     arguments=parse_arguments(c["function"].get("arguments", ""),
                                               f"tool_calls[{i}].arguments"))
            for i, c in enumerate(raw)]


@dataclass
class _StreamState:
    """What a streamed answer adds up to so far."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    reason: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)

    def add(self, chunk: dict[str, Any]) -> str:
        """Fold one chunk in; return its text delta."""
        self.usage = chunk.get("usage") or self.usage
        delta_text = ""
        for choice in chunk.get("choices") or []:
            self.reason = choice.get("finish_reason") or self.reason
            delta = choice.get("delta") or {}
            delta_text += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(tc.get("index", 0),
                                             {"id": "", "function": {"name": "", "arguments": ""}})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
        self.text.append(delta_text)
        return delta_text


class OpenAIProvider:
    """Chat completions over HTTP with httpx."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float = 120.0
                 ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self._http = RemoteEndpoint(self.name, base_url, headers, timeout_s)

    def _completion(self, request: ChatRequest, text: str, reason: str,
                    raw_calls: list[dict[str, Any]], usage: dict[str, Any]) -> Completion:
        used = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        data = None
        try:
            if request.json_schema is not None and not raw_calls:
                data = parse_json_output(text, request.json_schema, reason)
            calls = parse_tool_calls(raw_calls)
        except ModelOutputInvalid as exc:
            raise with_usage(exc, used.total_tokens) from exc
        return Completion(text=text, provider=self.name, model=self.model, finish_reason=reason,
                          usage=used, tool_calls=calls, data=data)

    async def complete(self, request: ChatRequest) -> Completion:
        check_request(request)
        answer = await self._http.post("/chat/completions", openai_body(request, self.model, False))
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        return self._completion(request, message.get("content") or "",
                                choice.get("finish_reason") or "stop",
                                message.get("tool_calls") or [], answer.get("usage") or {})

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamChunk, None]:
        check_request(request)
        state = _StreamState()
        async with self._http.stream("/chat/completions",
                                     openai_body(request, self.model, True)) as events:
            async for event in events:
                if event.data.strip() == "[DONE]":
                    break
                delta = state.add(event_json(event, self.name))
                if delta:
                    yield StreamChunk(delta=delta)
        calls = [state.calls[i] for i in sorted(state.calls)]
        yield StreamChunk(completion=self._completion(request, "".join(state.text), state.reason,
                                                      calls, state.usage))

    async def aclose(self) -> None:
        await self._http.aclose()
