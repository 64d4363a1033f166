"""Tool definitions and the registry: name, description, schemas, cost, rate limit, kind.

A `python` tool runs in-process: its `run(ctx, args)` is an async generator yielding text
deltas and, last, one ToolOutput. A `sandbox` tool is a `job(args)` building a SandboxJob and a
`parse(outcome)` turning the finished process into the result.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from jsonschema import Draft202012Validator

from somastack.agent.llm.structured import check_schema
from somastack.agent.llm.types import ToolSpec
from somastack.agent.tools.sandbox import SandboxJob, SandboxOutcome
from somastack.errors import Conflict, InvalidInput, SomaError, ToolNotAllowed

Kind = Literal["python", "sandbox"]
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


@dataclass(frozen=True)
class ToolContext:
    """Who is calling: the tenant (and agent, session) charged, the trace, the allow-list."""

    tenant: str
    agent: str = ""
    session: str = ""
    trace_id: str = ""
    allow: frozenset[str] | None = None  # None: every registered tool


@dataclass
class ToolOutput:
    """A tool's result and the metered resources it used beyond the call itself."""

    result: Any
    egress_bytes: int = 0
    storage_bytes: int = 0


Runner = Callable[[ToolContext, dict[str, Any]], AsyncGenerator["str | ToolOutput", None]]


@dataclass(frozen=True)
class ToolDef:
    name: str
    description: str
    args_schema: dict[str, Any]
    result_schema: dict[str, Any]
    kind: Kind = "python"
    run: Runner | None = None
    job: Callable[[dict[str, Any]], SandboxJob] | None = None
    parse: Callable[[SandboxOutcome], ToolOutput] | None = None
    cost_cents: Decimal = Decimal(0)
    rate_limit_per_min: int | None = None
    max_egress_bytes: int = 0  # reserved against the budget before the call
    max_storage_bytes: int = 0
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Changes nothing and sends nothing out (no writes, no egress): the audit row of the policy
    # decision that admitted a call may be written while it runs, and is committed before any of
    # its output leaves the broker. Any other tool runs only after that row is committed.
    read_only: bool = False
    # (a request, the arguments for it): shown to the model as a worked example before it
    # writes arguments; small models copy the shape and stop instead of rambling
    example: tuple[str, dict[str, Any]] | None = None

    def spec(self) -> ToolSpec:
        """What the model is shown."""
        return ToolSpec(self.name, self.description, self.args_schema)


def schema_errors(schema: dict[str, Any], value: Any, prefix: str) -> list[tuple[str, str]]:
    """(field, message) for every violation, fields as `prefix.a[0].b`, in path order."""
    out = []
    for err in sorted(Draft202012Validator(schema).iter_errors(value),
                      key=lambda e: [str(p) for p in e.absolute_path]):
        path = prefix
        for p in err.absolute_path:
            path += f"[{p}]" if isinstance(p, int) else f".{p}"
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = next((r for r in err.validator_value if r not in err.instance), "")
            path += f".{missing}"
        elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
            extra = sorted(k for k in err.instance if k not in known)
            path += f".{extra[0]}" if extra else ""
        out.append((path, err.message))
    return out


def check_against(schema: dict[str, Any], value: Any, prefix: str, error: type[SomaError]) -> None:
    """Raise `error` naming the first field of `value` that violates `schema`."""
    errors = schema_errors(schema, value, prefix)
    if errors:
        path, message = errors[0]
        raise error(f"{path}: {message}", field=path)


class ToolRegistry:
    """The tools a broker can run, by name."""

    def __init__(self, tools: list[ToolDef] | None = None) -> None:
        self._tools: dict[str, ToolDef] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: ToolDef) -> None:
        """Add a tool after checking its definition; a taken name is a Conflict."""
        if not _NAME.match(tool.name):
            raise InvalidInput("lowercase dotted name expected, e.g. memory.recall", field="name")
        if tool.name in self._tools:
            raise Conflict(f"tool {tool.name!r} is already registered", field="name")
        check_schema(tool.args_schema, "args_schema")
        check_schema(tool.result_schema, "result_schema")
        if tool.kind == "python" and tool.run is None:
            raise InvalidInput("a python tool needs `run`", field="run")
        if tool.kind == "sandbox" and (tool.job is None or tool.parse is None):
            raise InvalidInput("a sandbox tool needs `job` and `parse`", field="job")
        if tool.kind not in ("python", "sandbox"):
            raise InvalidInput("expected python or sandbox", field="kind")
        if tool.cost_cents < 0:
            raise InvalidInput("must not be negative", field="cost_cents")
        if tool.rate_limit_per_min is not None and tool.rate_limit_per_min < 1:
            raise InvalidInput("must be at least 1 (or None for no limit)", field="rate_limit_per_min")
        self._tools[tool.name] = tool

    def get(self, name: str) -> ToolDef:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolNotAllowed(f"no tool named {name!r}", field="tool")
        return tool

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self, allow: frozenset[str] | None = None) -> list[ToolSpec]:
        """The specs of the registered tools the allow-list admits, for the model."""
        return [self._tools[n].spec() for n in self.names() if allow is None or n in allow]
