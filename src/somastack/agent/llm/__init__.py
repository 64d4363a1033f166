"""LLM providers behind one async interface: `complete`, `stream`, token usage, JSON output."""

from __future__ import annotations

from somastack.agent.llm.anthropic import AnthropicProvider
from somastack.agent.llm.fallback import FallbackChain
from somastack.agent.llm.local import LocalProvider
from somastack.agent.llm.openai import OpenAIProvider
from somastack.agent.llm.types import (
    ChatRequest,
    Completion,
    Fallback,
    LLMProvider,
    Message,
    StreamChunk,
    ToolCall,
    ToolSpec,
    Usage,
)
from somastack.config import Settings
from somastack.errors import InvalidInput

PROVIDERS = ("local", "openai", "anthropic")


def build_provider(name: str, settings: Settings) -> LLMProvider:
    """One provider by name, configured from the settings."""
    if name == "local":
        return LocalProvider(settings)
    if name == "openai":
        return OpenAIProvider(settings.openai_base_url, settings.openai_model,
                              settings.openai_api_key, settings.llm_timeout_s)
    if name == "anthropic":
        return AnthropicProvider(settings.anthropic_base_url, settings.anthropic_model,
                                 settings.anthropic_api_key, settings.llm_timeout_s)
    raise InvalidInput(f"unknown provider {name!r}; expected one of {', '.join(PROVIDERS)}",
                       field="llm_providers")


def build_chain(settings: Settings, names: list[str] | None = None) -> FallbackChain:
    """The providers named (a persona's list, or SOMA_LLM_PROVIDERS) as one fallback chain."""
    wanted = names if names is not None else [
        n.strip() for n in settings.llm_providers.split(",") if n.strip()]
    return FallbackChain([build_provider(n, settings) for n in wanted])


__all__ = [
    "AnthropicProvider", "ChatRequest", "Completion", "Fallback", "FallbackChain", "LLMProvider",
    "LocalProvider", "Message", "OpenAIProvider", "StreamChunk", "ToolCall", "ToolSpec", "Usage",
    "build_chain", "build_provider",
]
