"""The tool broker: every tool call passes the same gates, in this order, before it runs.

1. the tool exists and is on the context's allow-list (ToolNotAllowed, field `tool`);
2. the arguments validate against its JSON Schema (InvalidInput naming `arguments.<field>`);
3. the authorize callback (the policy decision point) allows it (ToolNotAllowed); its decision's
   audit row is committed before the call runs, or, for a read-only tool, before any of its
   output leaves the broker (it may be written while the tool runs);
4. an idempotency key, if given, is claimed, or the first call's result is returned (replayed);
5. the tool's rate limit admits it (RateLimited);
6. the budget hook reserves the call's worst-case cost (BudgetExhausted).
Then it runs, its output streams as ToolDelta events, its result is checked against the result
schema, the budget is settled with the actual usage and the result stored for the key. A call
that fails or is abandoned after it started is still settled (it used resources) and drops its
idempotency claim so a retry runs again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

from somastack.agent.tools import calls
from somastack.agent.tools.registry import (
    ToolContext,
    ToolDef,
    ToolOutput,
    ToolRegistry,
    check_against,
)
from somastack.agent.tools.sandbox import Sandbox, SandboxOutcome
from somastack.errors import InvalidInput, SomaError, ToolFailed, ToolNotAllowed
from somastack.store import Database


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # the decision's audit row, while it is being written (None: already written, or none)
    audited: Awaitable[Any] | None = None


class Authorizer(Protocol):
    """The policy decision point for a tool call (governance plugs its Rego policy in here)."""

    async def __call__(self, ctx: ToolContext, tool: ToolDef, args: dict[str, Any]) -> Decision: ...


class BudgetHook(Protocol):
    """Reserve a call's worst case before it runs; settle what it used, or release if it did not."""

    async def reserve(self, ctx: ToolContext, tool: ToolDef) -> Any: ...

    async def settle(self, hold: Any, tool: ToolDef, output: ToolOutput | None) -> None: ...

    async def release(self, hold: Any) -> None: ...


@dataclass(frozen=True)
class ToolDelta:
    call_id: str
    tool: str
    text: str


@dataclass(frozen=True)
class ToolDone:
    call_id: str
    tool: str
    result: Any
    replayed: bool
    duration_ms: float
    egress_bytes: int = 0
    storage_bytes: int = 0
    run_ms: float = 0.0  # the tool's own execution, without the gates


ToolEvent = ToolDelta | ToolDone


class ToolBroker:
    def __init__(self, registry: ToolRegistry, db: Database, *, authorize: Authorizer,
                 budget: BudgetHook, sandbox: Sandbox | None = None,
                 idempotency_ttl_s: int = 24 * 3600) -> None:
        self.registry = registry
        self.db = db
        self.authorize = authorize
        self.budget = budget
        self.sandbox = sandbox
        self.ttl_s = idempotency_ttl_s
        # a claim still "running" after the longest a call can take belongs to a dead process
        self.stale_s = max(600.0, 3 * (sandbox.limits.timeout_s if sandbox else 0.0))

    async def _admit(self, ctx: ToolContext, name: str, args: Any
                     ) -> tuple[ToolDef, Awaitable[Any] | None]:
        tool = self.registry.get(name)
        if ctx.allow is not None and name not in ctx.allow:
            raise ToolNotAllowed(f"{name!r} is not on this session's allow-list", field="tool")
        if not isinstance(args, dict):
            raise InvalidInput("must be a JSON object", field="arguments")
        check_against(tool.args_schema, args, "arguments", InvalidInput)
        decision = await self.authorize(ctx, tool, args)
        audited = decision.audited
        if audited is not None and (not decision.allowed or not tool.read_only):
            await audited
            audited = None
        if not decision.allowed:
            raise ToolNotAllowed(f"{name!r} denied by policy: {decision.reason or 'no reason'}",
                                 field="tool")
        if tool.kind == "sandbox" and self.sandbox is None:
            await _committed(audited)
            raise ToolNotAllowed(f"{name!r} needs a sandbox and this broker has none", field="tool")
        return tool, audited

    async def call(self, ctx: ToolContext, name: str, args: dict[str, Any], *,
                   call_id: str | None = None, idempotency_key: str | None = None,
                   on_start: Callable[[], None] | None = None,
                   ) -> AsyncGenerator[ToolEvent, None]:
        """Run one tool call through every gate; yield its deltas, then one ToolDone.
        `on_start` is called when the gates have passed and the tool starts running."""
        call_id = call_id or f"tc_{uuid.uuid4().hex[:16]}"
        started = time.monotonic()
        tool, audited = await self._admit(ctx, name, args)  # audited: a read-only tool's row
        claim = None
        hold, ran, output = None, False, None
        try:
            if idempotency_key is not None:
                claim = await calls.claim(self.db, ctx.tenant, name, idempotency_key, args,
                                          ttl_s=self.ttl_s, stale_s=self.stale_s)
                if claim.replay is not None:
                    await _committed(audited)
                    audited = None
                    yield ToolDone(call_id, name, claim.replay["result"], True, _ms(started))
                    return
            await calls.admit(self.db, ctx.tenant, name, tool.rate_limit_per_min)
            hold = await self.budget.reserve(ctx, tool)
            ran = True
            if on_start is not None:
                on_start()
            run_started = time.monotonic()
            async with aclosing(self._execute(ctx, tool, args)) as items:
                async for item in items:
                    if isinstance(item, str):
                        await _committed(audited)
                        audited = None
                        yield ToolDelta(call_id, name, item)
                    else:
                        output = item
            run_ms = _ms(run_started)
            if output is None:
                raise ToolFailed(f"{name} finished without a result", field="result")
            check_against(tool.result_schema, output.result, "result", ToolFailed)
            await _committed(audited)
            audited = None
            if claim is not None:
                await calls.complete(self.db, ctx.tenant, claim.key, {"result": output.result})
                claim = None
        finally:
            try:
                await _committed(audited)
            finally:
                if hold is not None:
                    await (self.budget.settle(hold, tool, output) if ran
                           else self.budget.release(hold))
                if claim is not None and claim.replay is None:
                    await calls.drop(self.db, ctx.tenant, claim.key)
        yield ToolDone(call_id, name, output.result, False, _ms(started), output.egress_bytes,
                       output.storage_bytes, run_ms)

    async def run(self, ctx: ToolContext, name: str, args: dict[str, Any], *,
                  idempotency_key: str | None = None) -> ToolDone:
        """`call` without the deltas: the ToolDone of the call."""
        done = None
        async with aclosing(self.call(ctx, name, args, idempotency_key=idempotency_key)) as events:
            async for event in events:
                if isinstance(event, ToolDone):
                    done = event
        assert done is not None
        return done

    async def _execute(self, ctx: ToolContext, tool: ToolDef, args: dict[str, Any]
                       ) -> AsyncGenerator[str | ToolOutput, None]:
        try:
            if tool.kind == "python":
                assert tool.run is not None
                async with aclosing(tool.run(ctx, args)) as items:
                    async for item in items:
                        yield item
                return
            assert self.sandbox is not None and tool.job is not None and tool.parse is not None
            outcome: SandboxOutcome | None = None
            async with aclosing(self.sandbox.run(tool.job(args))) as pieces:
                async for piece in pieces:
                    if isinstance(piece, str):
                        yield piece
                    else:
                        outcome = piece
            assert outcome is not None
            yield tool.parse(outcome)
        except SomaError:
            raise
        except Exception as exc:  # a tool's own bug must not become a 500 or hide the cause
            raise ToolFailed(f"{tool.name}: {type(exc).__name__}: {exc}", field="tool") from exc


async def _committed(audited: Awaitable[Any] | None) -> None:
    """Wait until the decision's audit row is committed (a failed write raises); the write
    goes on even if the waiting call is cancelled."""
    if audited is not None:
        await asyncio.shield(audited)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
