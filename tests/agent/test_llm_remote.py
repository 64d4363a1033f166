"""The openai provider against a real OpenAI-compatible server (llama.cpp's, serving the local
model on loopback), provider fallback over real refused connections, and the wire formats."""

from __future__ import annotations

import pytest
from jsonschema import validate

from somastack.agent.llm import (
    AnthropicProvider,
    ChatRequest,
    FallbackChain,
    LocalProvider,
    Message,
    OpenAIProvider,
    ToolCall,
    build_chain,
)
from somastack.agent.llm.anthropic import AnthropicStream, anthropic_body
from somastack.agent.llm.openai import openai_body, parse_tool_calls
from somastack.agent.llm.sse import sse_events
from somastack.config import Settings
from somastack.errors import InvalidInput, ModelOutputInvalid, ProviderUnavailable

PICK = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"], "additionalProperties": False}


def ask(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(messages=[Message("system", "Be brief."), Message("user", text)],
                       **kw)  # type: ignore[arg-type]


def openai_on(local: LocalProvider, key: str | None = None) -> OpenAIProvider:
    return OpenAIProvider(local.http_url, "smollm2", key or local.http_key, timeout_s=60)


@pytest.mark.asyncio
async def test_openai_provider_completes_against_a_real_server(local_llm: LocalProvider) -> None:
    provider = openai_on(local_llm)
    try:
        out = await provider.complete(ask("Name a colour.", max_tokens=10, seed=7))
        assert out.provider == "openai" and out.text
        assert out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens <= 10
        shaped = await provider.complete(ask("Pick a colour as JSON.", json_schema=PICK,
                                             max_tokens=40))
        validate(shaped.data, PICK)
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_openai_stream_parses_sse_deltas_and_usage(local_llm: LocalProvider) -> None:
    provider = openai_on(local_llm)
    try:
        request = ask("Say hello to Ada.", max_tokens=12, seed=7)
        deltas, final = [], None
        async for chunk in provider.stream(request):
            if chunk.completion is not None:
                final = chunk.completion
            else:
                deltas.append(chunk.delta)
        assert final is not None and len(deltas) > 1
        assert "".join(deltas) == final.text == (await provider.complete(request)).text
        assert final.usage.completion_tokens >= len(deltas)
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_rejected_key_is_provider_unavailable(local_llm: LocalProvider) -> None:
    provider = openai_on(local_llm, key="wrong")
    try:
        with pytest.raises(ProviderUnavailable, match="HTTP 401"):
            await provider.complete(ask("hi", max_tokens=2))
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_failing_providers_fall_back_and_are_recorded(
    local_llm: LocalProvider, closed_port: int
) -> None:
    dead = f"http://127.0.0.1:{closed_port}"
    chain = FallbackChain([OpenAIProvider(f"{dead}/v1", "m", "k", 5),
                           AnthropicProvider(dead, "m", "k", 5), local_llm])
    try:
        out = await chain.complete(ask("Name a colour.", max_tokens=6))
        assert out.provider == "local"
        assert [(f.provider, f.error_type) for f in out.fallbacks] == [
            ("openai", "provider-unavailable"), ("anthropic", "provider-unavailable")]
        chunks = [c async for c in chain.stream(ask("Name a colour.", max_tokens=6))]
        final = chunks[-1].completion
        assert final is not None and final.text == out.text
        assert [f.provider for f in final.fallbacks] == ["openai", "anthropic"]
    finally:
        await chain.aclose()


@pytest.mark.asyncio
async def test_all_providers_failing_is_one_typed_error(closed_port: int) -> None:
    chain = FallbackChain([OpenAIProvider(f"http://127.0.0.1:{closed_port}/v1", "m", None, 5)])
    try:
        with pytest.raises(ProviderUnavailable, match="every provider failed"):
            await chain.complete(ask("hi"))
        with pytest.raises(ProviderUnavailable):
            [c async for c in chain.stream(ask("hi"))]
    finally:
        await chain.aclose()


def test_chain_from_settings_rejects_unknown_provider(settings: Settings) -> None:
    with pytest.raises(InvalidInput) as err:
        build_chain(settings, ["local", "gemini"])
    assert err.value.field == "llm_providers"


def test_openai_wire_format_round_trips_tool_calls() -> None:
    request = ChatRequest(messages=[
        Message("user", "weather?"),
        Message("assistant", tool_calls=[ToolCall("c1", "weather", {"city": "Oslo"})]),
        Message("tool", '{"temp": 3}', tool_call_id="c1"),
    ])
    body = openai_body(request, "m", stream=True)
    assert body["messages"][1]["tool_calls"][0]["function"] == {
        "name": "weather", "arguments": '{"city": "Oslo"}'}
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 3}'}
    assert body["stream_options"] == {"include_usage": True}
    calls = parse_tool_calls([{"id": "c9", "function": {"name": "w", "arguments": '{"a": 1}'}}])
    assert calls == [ToolCall("c9", "w", {"a": 1})]
    with pytest.raises(ModelOutputInvalid) as err:
        parse_tool_calls([{"id": "c", "function": {"name": "w", "arguments": '{"a": '}}])
    assert err.value.field == "tool_calls[0].arguments"


def test_anthropic_wire_format_merges_tool_results_and_forces_schema() -> None:
    request = ChatRequest(messages=[
        Message("system", "Be brief."), Message("user", "weather?"),
        Message("assistant", tool_calls=[ToolCall("t1", "weather", {"city": "Oslo"})]),
        Message("tool", "3C", tool_call_id="t1"), Message("user", "and tomorrow?"),
    ], json_schema=PICK)
    body = anthropic_body(request, "m", stream=False)
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text"]
    assert body["tool_choice"] == {"type": "tool", "name": "respond"}
    provider = AnthropicProvider("http://127.0.0.1:1", "m", None)
    out = provider.completion(request, [{"type": "tool_use", "id": "t", "name": "respond",
                                         "input": {"colour": "red"}}], "tool_use", {
        "input_tokens": 11, "output_tokens": 5})
    assert out.data == {"colour": "red"} and out.usage.total_tokens == 16
    with pytest.raises(ModelOutputInvalid) as err:
        provider.completion(request, [{"type": "tool_use", "id": "t", "name": "respond",
                                       "input": {"colour": "pink"}}], "tool_use", {})
    assert err.value.field == "$.colour"


@pytest.mark.asyncio
async def test_sse_parser_handles_events_comments_and_multiline_data() -> None:
    async def lines():  # type: ignore[no-untyped-def]
        for line in [": ping", "event: delta", "data: a", "data: b", "", "data: [DONE]", ""]:
            yield line

    events = [(e.event, e.data) async for e in sse_events(lines())]
    assert events == [("delta", "a\nb"), ("message", "[DONE]")]


def test_anthropic_stream_events_fold_into_text_tool_calls_and_usage() -> None:
    stream = AnthropicStream()
    sequence = [
        ("message_start", {"message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "look."}}),
        ("content_block_start", {"index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "memory.recall", "input": {}}}),
        ("content_block_delta", {"index": 1, "delta": {
            "type": "input_json_delta", "partial_json": '{"query": "ca'}}),
        ("content_block_delta", {"index": 1, "delta": {
            "type": "input_json_delta", "partial_json": 't"}'}}),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
    ]
    deltas = [stream.add(kind, data) for kind, data in sequence]
    assert "".join(deltas) == "Let me look."
    provider = AnthropicProvider("http://127.0.0.1:1", "m", None)
    out = provider.completion(ChatRequest(messages=[Message("user", "cat?")]), stream.content(),
                              stream.reason, stream.usage)
    assert out.text == "Let me look." and out.finish_reason == "tool_calls"
    assert out.tool_calls == [ToolCall("toolu_1", "memory.recall", {"query": "cat"})]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (12, 9)
    with pytest.raises(ProviderUnavailable):
        stream.add("error", {"error": {"type": "overloaded_error"}})
