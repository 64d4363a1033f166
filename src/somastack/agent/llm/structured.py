"""JSON-schema constrained output: the schema for tool choice, and checking what the model wrote.

Models without native tool calling (the local one) are asked for one JSON object that the
decoder is constrained to: `{"tool": <name>, "arguments": {...}}` for a call, or
`{"answer": "..."}` when the model may answer instead (tool_choice "auto").
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from somastack.agent.llm.types import ChatRequest, ToolCall, ToolSpec
from somastack.errors import InvalidInput, ModelOutputInvalid

_VALID: OrderedDict[str, None] = OrderedDict()  # schemas already checked, as canonical JSON
_VALID_MAX = 1024


def check_schema(schema: dict[str, Any], field: str) -> None:
    """Raise InvalidInput (naming `field`) when `schema` is not a valid JSON Schema. A turn asks
    with the same few schemas again and again, and checking one against the meta-schema costs a
    millisecond or two, so the valid ones are remembered."""
    if not isinstance(schema, dict):
        raise InvalidInput("must be a JSON Schema object", field=field)
    try:
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput("must be a JSON Schema object (plain JSON)", field=field) from exc
    if key in _VALID:
        _VALID.move_to_end(key)
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidInput(f"not a valid JSON Schema: {exc.message}", field=field) from exc
    _VALID[key] = None
    while len(_VALID) > _VALID_MAX:
        _VALID.popitem(last=False)


def check_request(request: ChatRequest) -> None:
    """Reject a request no provider could serve, naming the field at fault."""
    if not request.messages:
        raise InvalidInput("at least one message is required", field="messages")
    if request.max_tokens < 1:
        raise InvalidInput("must be at least 1", field="max_tokens")
    if request.json_schema is not None:
        check_schema(request.json_schema, "json_schema")
    names = [t.name for t in request.tools]
    if len(set(names)) != len(names):
        raise InvalidInput("tool names must be unique", field="tools")
    for i, tool in enumerate(request.tools):
        check_schema(tool.parameters, f"tools[{i}].parameters")
    if request.tool_choice == "required" and not request.tools:
        raise InvalidInput("tool_choice 'required' needs at least one tool", field="tool_choice")


def tool_choice_schema(tools: list[ToolSpec], tool_choice: str) -> dict[str, Any]:
    """The schema of one tool call (or, with tool_choice 'auto', of a plain answer)."""
    options: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"tool": {"const": t.name}, "arguments": t.parameters},
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    if tool_choice == "auto":
        options.append({
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        })
    return options[0] if len(options) == 1 else {"anyOf": options}


def _path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def parse_json_output(text: str, schema: dict[str, Any], finish_reason: str) -> Any:
    """The model's text as JSON valid against `schema`; ModelOutputInvalid names what is wrong."""
    if finish_reason == "length":
        raise ModelOutputInvalid("the output was cut at max_tokens before the JSON was complete",
                                 field="max_tokens")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelOutputInvalid(f"output is not JSON: {exc.msg} at char {exc.pos}",
                                 field="output") from exc
    error = next(iter(sorted(Draft202012Validator(schema).iter_errors(data),
                             key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        raise ModelOutputInvalid(f"{_path(error.absolute_path)}: {error.message}",
                                 field=_path(error.absolute_path))
    return data


def decode_tool_choice(data: dict[str, Any]) -> tuple[list[ToolCall], str]:
    """(tool calls, answer text) from an object valid against `tool_choice_schema`."""
    if "tool" in data:
        return [ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=data["tool"],
                         arguments=data["arguments"])], ""
    return [], str(data["answer"])


def decoding_schema(request: ChatRequest) -> dict[str, Any] | None:
    """The schema a constrained decoder must follow for this request, if any."""
    if request.json_schema is not None:
        return request.json_schema
    if request.tools and request.tool_choice != "none":
        return tool_choice_schema(request.tools, request.tool_choice)
    return None


def interpret_constrained(
    request: ChatRequest, text: str, finish_reason: str
) -> tuple[str, list[ToolCall], Any]:
    """(answer text, tool calls, parsed data) from the output of a constrained decode."""
    schema = decoding_schema(request)
    if schema is None:
        return text, [], None
    data = parse_json_output(text, schema, finish_reason)
    if request.json_schema is not None:
        return text, [], data
    calls, answer = decode_tool_choice(data)
    return answer, calls, None


def parse_arguments(raw: str | dict[str, Any], field: str) -> dict[str, Any]:
    """A native tool call's arguments as an object (providers send them as a JSON string)."""
    if isinstance(raw, dict):
        return raw
    try:
        args = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ModelOutputInvalid(f"tool arguments are not JSON: {exc.msg}", field=field) from exc
    if not isinstance(args, dict):
        raise ModelOutputInvalid("tool arguments must be a JSON object", field=field)
    return args


def with_usage(exc: ModelOutputInvalid, tokens: int) -> ModelOutputInvalid:
    """The same error carrying the tokens the call consumed (so the ledger can charge them)."""
    return ModelOutputInvalid(exc.detail, field=exc.field, usage_tokens=tokens)
