"""The local provider on the real SmolLM2-135M model: text, constrained JSON, tools, streaming."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import validate

from somastack.agent.llm import ChatRequest, LocalProvider, Message, ToolSpec
from somastack.agent.llm.local import load_local_model
from somastack.config import Settings
from somastack.errors import InvalidInput, ModelOutputInvalid

CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}
RECALL = ToolSpec("memory.recall", "Search the user's memories.", {
    "type": "object", "properties": {"query": {"type": "string", "maxLength": 40}},
    "required": ["query"], "additionalProperties": False})
EVAL = ToolSpec("python.eval", "Run Python code.", {
    "type": "object", "properties": {"code": {"type": "string", "maxLength": 60}},
    "required": ["code"], "additionalProperties": False})


def ask(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(messages=[Message("user", text)], **kw)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_complete_reports_usage_and_is_deterministic(local_llm: LocalProvider) -> None:
    first = await local_llm.complete(ask("Name a colour.", max_tokens=12))
    second = await local_llm.complete(ask("Name a colour.", max_tokens=12))
    assert first.provider == "local" and first.model.endswith(".gguf")
    assert first.text and first.text == second.text
    assert first.usage.prompt_tokens > 0 and 0 < first.usage.completion_tokens <= 12
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


@pytest.mark.asyncio
async def test_json_schema_output_is_parsed_and_valid(local_llm: LocalProvider) -> None:
    out = await local_llm.complete(ask("What is the capital of France? Answer in JSON.",
                                       json_schema=CITY, max_tokens=40))
    validate(out.data, CITY)
    assert out.data["city"] in {"Paris", "Rome", "Oslo"}


@pytest.mark.asyncio
async def test_required_tool_choice_yields_a_valid_call(local_llm: LocalProvider) -> None:
    out = await local_llm.complete(ask("What did I say about my cat?", tools=[RECALL, EVAL],
                                       tool_choice="required", max_tokens=80))
    assert len(out.tool_calls) == 1 and out.text == ""
    call = out.tool_calls[0]
    schema = {t.name: t.parameters for t in (RECALL, EVAL)}[call.name]
    validate(call.arguments, schema)


@pytest.mark.asyncio
async def test_stream_deltas_add_up_to_the_completion(local_llm: LocalProvider) -> None:
    request = ask("Say hello to Ada.", max_tokens=16)
    deltas, final = [], None
    async for chunk in local_llm.stream(request):
        if chunk.completion is not None:
            final = chunk.completion
        else:
            deltas.append(chunk.delta)
    assert final is not None and len(deltas) > 1
    assert "".join(deltas) == final.text
    assert final.text == (await local_llm.complete(request)).text
    assert final.usage.completion_tokens >= len(deltas)


@pytest.mark.asyncio
async def test_abandoned_stream_leaves_the_model_usable(local_llm: LocalProvider) -> None:
    chunks = local_llm.stream(ask("Count from one to fifty in words.", max_tokens=200))
    async for chunk in chunks:
        assert chunk.delta
        break
    await chunks.aclose()
    out = await local_llm.complete(ask("Name a colour.", max_tokens=4))
    assert out.usage.completion_tokens > 0


@pytest.mark.asyncio
async def test_output_cut_before_the_json_closes_is_a_typed_error(local_llm: LocalProvider) -> None:
    with pytest.raises(ModelOutputInvalid) as err:
        await local_llm.complete(ask("Capital of France?", json_schema=CITY, max_tokens=3))
    assert err.value.field == "max_tokens"


@pytest.mark.asyncio
async def test_bad_requests_name_the_field(local_llm: LocalProvider) -> None:
    cases = [
        (ChatRequest(messages=[]), "messages"),
        (ask("x", json_schema={"type": "bogus"}), "json_schema"),
        (ask("x", tools=[RECALL, ToolSpec("bad", "d", {"type": 3})]), "tools[1].parameters"),
        (ask("x", tools=[RECALL, RECALL]), "tools"),
        (ask("x", tool_choice="required"), "tool_choice"),
        (ask("x", max_tokens=0), "max_tokens"),
    ]
    for request, field in cases:
        with pytest.raises(InvalidInput) as err:
            await local_llm.complete(request)
        assert err.value.field == field


def test_model_is_loaded_once_and_path_is_configurable(settings: Settings, tmp_path: Path) -> None:
    assert load_local_model(settings) is load_local_model(settings)
    with pytest.raises(InvalidInput) as err:
        LocalProvider(settings.model_copy(update={"llm_model_path": tmp_path / "none.gguf"}))
    assert err.value.field == "llm_model_path"
