"""The `anthropic` provider: the Messages API with native tool use, over httpx.

Structured output is a forced call of one tool, `respond`, whose input schema is the requested
JSON Schema; the call's input is the answer's data.
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
from somastack.errors import ModelOutputInvalid, ProviderUnavailable

API_VERSION = "2023-06-01"
RESPOND = "respond"
_REASONS = {"max_tokens": "length", "tool_use": "tool_calls"}


def _blocks(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
               for c in m.tool_calls]
    return blocks


def anthropic_messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, alternating user/assistant messages with content blocks)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        role = "assistant" if m.role == "assistant" else "user"  # tool results travel as user
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(_blocks(m))
        else:
            out.append({"role": role, "content": _blocks(m)})
    return system, out


def anthropic_body(request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    """The Messages API request body for this call."""
    system, messages = anthropic_messages(request.messages)
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens,
                            "temperature": request.temperature, "messages": messages,
                            "stream": stream}
    if system:
        body["system"] = system
    if request.stop:
        body["stop_sequences"] = request.stop
    tools = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
             for t in request.tools]
    if request.json_schema is not None:
        tools = [{"name": RESPOND, "description": "Give the answer in the required shape.",
                  "input_schema": request.json_schema}]
        body["tool_choice"] = {"type": "tool", "name": RESPOND}
    elif tools:
        body["tool_choice"] = {"type": {"required": "any"}.get(request.tool_choice,
                                                               request.tool_choice)}
    if tools:
        body["tools"] = tools
    return body


@dataclass
class AnthropicStream:
    """Content blocks and usage folded from the stream's events."""

    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    reason: str = "end_turn"
    usage: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, data: dict[str, Any]) -> str:
        """Fold one event in; return its text delta."""
        if kind == "error":
            raise ProviderUnavailable(f"anthropic: {data.get('error')}", field="provider")
        if kind == "message_start":
            self.usage.update((data.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            self.reason = (data.get("delta") or {}).get("stop_reason") or self.reason
            self.usage.update(data.get("usage") or {})
        elif kind == "content_block_start":
            block = dict(data.get("content_block") or {})
            block["partial_json"] = ""
            self.blocks[int(data.get("index", 0))] = block
        elif kind == "content_block_delta":
            block = self.blocks.setdefault(int(data.get("index", 0)), {"type": "text", "text": ""})
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
                return str(delta.get("text", ""))
            block["partial_json"] += delta.get("partial_json", "")
        return ""

    def content(self) -> list[dict[str, Any]]:
        out = []
        for i in sorted(self.blocks):
            block = self.blocks.pop(i)
            partial = block.pop("partial_json", "")
            if block.get("type") == "tool_use" and partial:
                block["input"] = partial
            out.append(block)
        return out


class AnthropicProvider:
    """Messages API over HTTP with httpx."""

    name = "anthropic"

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float = 120.0
                 ) -> None:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self.model = model
        self._http = RemoteEndpoint(self.name, base_url, headers, timeout_s)

    def completion(self, request: ChatRequest, content: list[dict[str, Any]], stop_reason: str,
                   usage: dict[str, Any]) -> Completion:
        """A Completion from the answer's content blocks (shared by complete and stream)."""
        reason = _REASONS.get(stop_reason, "stop")
        used = Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0))
        text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
        try:
            calls = [ToolCall(id=b.get("id", f"toolu_{i}"), name=b.get("name", ""),
                              arguments=parse_arguments(b.get("input") or {}, f"content[{i}].input"))
                     for i, b in enumerate(content) if b.get("type") == "tool_use"]
            data = None
            if request.json_schema is not None:
                answer = next((c.arguments for c in calls if c.name == RESPOND), None)
                raw = json.dumps(answer) if answer is not None else text
                data = parse_json_output(raw, request.json_schema,
                                         "stop" if answer is not None else reason)
                text, calls = raw, []
        except ModelOutputInvalid as exc:
            raise with_usage(exc, used.total_tokens) from exc
        return Completion(text=text, provider=self.name, model=self.model, finish_reason=reason,
                          usage=used, tool_calls=calls, data=data)

    async def complete(self, request: ChatRequest) -> Completion:
        check_request(request)
        answer = await self._http.post("/v1/messages", anthropic_body(request, self.model, False))
        return self.completion(request, answer.get("content") or [],
                               answer.get("stop_reason") or "end_turn", answer.get("usage") or {})

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamChunk, None]:
        check_request(request)
        state = AnthropicStream()
        async with self._http.stream("/v1/messages",
                                     anthropic_body(request, self.model, True)) as events:
            async for event in events:
                data = event_json(event, self.name)
                delta = state.add(str(data.get("type") or event.event), data)
                if delta:
                    yield StreamChunk(delta=delta)
        yield StreamChunk(completion=self.completion(request, state.content(), state.reason,
                                                     state.usage))

    async def aclose(self) -> None:
        await self._http.aclose()
