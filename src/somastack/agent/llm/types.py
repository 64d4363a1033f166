"""The provider-neutral shapes of a chat call: messages, tools, requests, completions, chunks."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass
class ToolCall:
    """One call the model asks for: the tool's name and its arguments (already parsed JSON)."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Message:
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # on role "tool": which call this is the result of


@dataclass
class ToolSpec:
    """A tool offered to the model: name, description and the JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class ChatRequest:
    """One model call. `json_schema` constrains the answer; `tools` offers calls to the model.

    tool_choice: "auto" (answer or call), "required" (must call one of `tools`), "none".
    """

    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: Literal["auto", "required", "none"] = "auto"
    json_schema: dict[str, Any] | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Fallback:
    """A provider that failed before the one that answered; recorded in the turn."""

    provider: str
    error_type: str
    detail: str


@dataclass
class Completion:
    """A finished call: text (or parsed JSON when a schema was given), tool calls, usage."""

    text: str
    provider: str
    model: str
    usage: Usage
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    data: Any = None  # the parsed, schema-valid JSON when the request carried `json_schema`
    fallbacks: list[Fallback] = field(default_factory=list)


@dataclass
class StreamChunk:
    """One piece of a streamed call: a text delta, or (last) the whole completion."""

    delta: str = ""
    completion: Completion | None = None


class LLMProvider(Protocol):
    """What every provider offers; `stream` yields deltas, then one chunk carrying the completion."""

    name: str
    model: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamChunk, None]: ...

    async def aclose(self) -> None: ...
