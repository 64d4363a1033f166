"""The tool broker: registry, gates (allow-list, schema, policy, idempotency, rate, budget),
in-process and sandboxed execution with streamed output, and the built-in tools."""

from somastack.agent.tools.broker import (
    Authorizer,
    BudgetHook,
    Decision,
    ToolBroker,
    ToolDelta,
    ToolDone,
    ToolEvent,
)
from somastack.agent.tools.budget import LedgerBudget
from somastack.agent.tools.builtins import http_fetch_tool, memory_tools, python_eval_tool
from somastack.agent.tools.registry import ToolContext, ToolDef, ToolOutput, ToolRegistry
from somastack.agent.tools.sandbox import PYTHON, Sandbox, SandboxJob, SandboxLimits, SandboxOutcome

__all__ = [
    "PYTHON", "Authorizer", "BudgetHook", "Decision", "LedgerBudget", "Sandbox", "SandboxJob",
    "SandboxLimits", "SandboxOutcome", "ToolBroker", "ToolContext", "ToolDef", "ToolDelta",
    "ToolDone", "ToolEvent", "ToolOutput", "ToolRegistry", "http_fetch_tool", "memory_tools",
    "python_eval_tool",
]
