"""One agent turn: Recall → Plan → Tools → Verify → Answer → Remember, under budgets.

`Runtime` holds what lives as long as the server (provider chains, tool registries, prices,
the sandbox); `Runtime.run(spec)` is an async generator of the turn's events, each already
numbered and queued for storage in its EventLog. The events and the ledger's usage are written
in the background whenever the turn starts waiting on a model or a tool, and the rest when it
closes, before its status is recorded. Stages:

1. **recall** — when the session may read memory, the persona's namespace is searched for the
   input; the evidence ids (and texts) go into the event and into the prompts.
2. **plan** — when tools are allowed, the model writes `{"steps": [{"tool": …}]}` under
   constrained decoding: the tool names are an enum of the allowed tools, and the step count is
   capped by `max_steps` (at least one step when `tool_choice` is `required`).
3. **tools** — for each step the model writes the arguments (constrained to the tool's JSON
   Schema), then the broker runs the call through its gates (allow-list, schema, policy, the
   session's tools_per_min, budget), streaming `tool.call`, `tool.delta`, `tool.done`.
   A failed call becomes a non-fatal `error` event and the turn goes on without its result.
4. **answer** — streamed from the model as `answer` deltas, grounded in evidence and results;
5. **verify** — the answer checked against evidence and tool results (see agent/verify.py),
   then the final `answer` event with the verdict's citations;
6. **remember** — when the session may write memory, the exchange is stored (key
   `turn:{turn_id}`, so a retry cannot duplicate it) in the persona's namespace;
7. **usage** — what the turn used: tokens, tool calls, storage, cost, and where the time went.

Every model call reserves its worst case in the ledger first (agent/metering.py); a refused
reservation ends the turn with an `error` event of type `budget_exhausted`, nothing spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

from somastack.agent.llm import (
    ChatRequest,
    Completion,
    FallbackChain,
    Message,
    ToolCall,
    build_chain,
)
from somastack.agent.metering import MeteredLLM, prompt_token_bound
from somastack.agent.tools import (
    Decision,
    LedgerBudget,
    Sandbox,
    ToolBroker,
    ToolContext,
    ToolDef,
    ToolDelta,
    ToolDone,
    ToolRegistry,
    http_fetch_tool,
    memory_tools,
    python_eval_tool,
)
from somastack.agent.turns import EventLog, finish_turn, history
from somastack.agent.verify import Ground, tool_text, verify
from somastack.brain.embed import AsyncEmbedder
from somastack.brain.memory import remember
from somastack.brain.model import MemoryDraft, RecallQuery
from somastack.brain.recall import recall
from somastack.config import Settings
from somastack.errors import (
    BudgetExhausted,
    ModelOutputInvalid,
    RateLimited,
    SomaError,
    ToolFailed,
)
from somastack.governance import audit
from somastack.ledger import Amounts, PriceTable, Scope
from somastack.ledger.hold import Hold
from somastack.store import Database

log_ = logging.getLogger("somastack.agent")
Memory = Literal["none", "read", "readwrite"]
EVIDENCE_CHARS = 400  # per memory, in prompts
RESULT_CHARS = 1500  # per tool result, in prompts
HISTORY_TURNS = 3
ARGS_MAX_TOKENS = 256


class PersonaLike(Protocol):
    """What a turn reads of its persona (read-only, so a frozen dataclass satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def system_prompt(self) -> str: ...
    @property
    def providers(self) -> list[str]: ...
    @property
    def tools(self) -> list[str]: ...
    @property
    def namespace(self) -> str: ...


AuthorizeTool = Callable[[str, dict[str, Any]], Any]  # (tool, args) -> awaitable Decision


@dataclass
class TurnSpec:
    """Everything one turn needs, already checked against the session token."""

    tenant: str
    actor: str
    turn_id: str
    trace_id: str
    session_id: str
    persona: PersonaLike
    text: str
    tools: list[str]
    memory: Memory
    authorize: AuthorizeTool
    max_steps: int = 3
    tool_choice: Literal["auto", "required", "none"] = "auto"
    # the session's tool-call rate gate: returns None to admit, or seconds to wait
    tool_rate: Callable[[], Awaitable[int | None]] | None = None
    egress_allow: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # client-directed {tool, arguments}
    max_tokens: int | None = None  # cap on every model call of the turn


@dataclass
class _Tally:
    """What the turn used and where its time went."""

    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: int = 0
    storage_bytes: int = 0
    egress_bytes: int = 0
    model_ms: float = 0.0
    embed_ms: float = 0.0  # the embedding model's time on the turn's critical path
    tools_ms: float = 0.0
    streaming: int = 0  # tokens charged so far by an answer stream that has not ended
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    _lap: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        self._lap = (self.started, 0.0, 0.0, 0.0)

    def lap(self, stage: str) -> None:
        """Close a stage: its wall time since the previous lap, and the model and tool time in it."""
        now = time.perf_counter()
        last, model, embed, tools = self._lap
        self.stages[stage] = {"wall": round((now - last) * 1000, 3),
                              "model": round(self.model_ms - model, 3),
                              "embed": round(self.embed_ms - embed, 3),
                              "tools": round(self.tools_ms - tools, 3)}
        self._lap = (now, self.model_ms, self.embed_ms, self.tools_ms)

    def count(self, c: Completion, ms: float) -> None:
        self.prompt_tokens += c.usage.prompt_tokens
        self.completion_tokens += c.usage.completion_tokens
        self.model_ms += ms
        self.fallbacks += [{"provider": f.provider, "error_type": f.error_type,
                            "detail": f.detail} for f in c.fallbacks]

    def report(self, prices: PriceTable, provider: str) -> dict[str, Any]:
        tokens = self.prompt_tokens + self.completion_tokens + self.streaming
        cost = prices.charge(tokens=tokens, tool_calls=self.tool_calls, provider=provider,
                             storage_bytes=self.storage_bytes,
                             egress_bytes=self.egress_bytes).cost_cents
        total = (time.perf_counter() - self.started) * 1000
        return {
            "tokens": tokens, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens + self.streaming,
            "tool_calls": self.tool_calls,
            "storage_bytes": self.storage_bytes, "egress_bytes": self.egress_bytes,
            "cost_cents": str(cost.quantize(Decimal("0.000001"))),
            "timings_ms": {"total": round(total, 3), "model": round(self.model_ms, 3),
                           "embed": round(self.embed_ms, 3), "tools": round(self.tools_ms, 3),
                           "overhead": round(total - self.model_ms - self.embed_ms
                                             - self.tools_ms, 3)},
            "stages_ms": self.stages,
        }


def error_data(exc: SomaError, *, fatal: bool, **extra: Any) -> dict[str, Any]:
    return {"type": exc.type, "status": exc.status, "detail": exc.detail, "field": exc.field,
            "fatal": fatal, **extra}


class Runtime:
    """The agent runtime of one server process."""

    def __init__(self, settings: Settings, db: Database, embedder: AsyncEmbedder) -> None:
        self.settings, self.db, self.embedder = settings, db, embedder
        self.prices = PriceTable.from_mapping(settings.price_table)
        self.sandbox = Sandbox(settings)
        self._chains: dict[tuple[str, ...], FallbackChain] = {}
        self._registries: dict[tuple[str, tuple[str, ...]], ToolRegistry] = {}
        self.personas: dict[tuple[str, str], Any] = {}  # (tenant, hash) → persona (immutable)

    def has_chain(self, providers: list[str]) -> bool:
        return tuple(providers) in self._chains

    def chain(self, providers: list[str]) -> FallbackChain:
        key = tuple(providers)
        if key not in self._chains:
            self._chains[key] = build_chain(self.settings, list(providers))
        return self._chains[key]

    def registry(self, namespace: str, egress_allow: list[str]) -> ToolRegistry:
        key = (namespace, tuple(egress_allow))
        if key not in self._registries:
            s = self.settings
            self._registries[key] = ToolRegistry([
                python_eval_tool(),
                http_fetch_tool(egress_allow, max_bytes=s.http_fetch_max_bytes,
                                timeout_s=s.http_fetch_timeout_s),
                *memory_tools(self.db, self.embedder, namespace=namespace,
                              max_bytes=s.max_content_bytes, candidates=s.recall_candidates),
            ])
        return self._registries[key]

    async def aclose(self) -> None:
        for chain in self._chains.values():
            await chain.aclose()

    def hold(self, spec: TurnSpec) -> Hold:
        """The turn's ledger hold (see ledger/hold.py); `run` opens it, `drive` closes it."""
        return Hold(self.db, Scope(spec.tenant, spec.persona.name, spec.session_id))

    async def run(self, spec: TurnSpec, log: EventLog, tally: _Tally | None = None,
                  hold: Hold | None = None) -> AsyncGenerator[dict[str, Any], None]:
        """The turn's events, in order, each added to `log` (which stores them)."""
        tally = tally or _Tally()
        hold = hold or self.hold(spec)
        persona = spec.persona
        chain = self.chain(persona.providers)
        llm = MeteredLLM(chain, self.prices, hold)
        registry = self.registry(persona.namespace, spec.egress_allow)
        allowed = [t for t in spec.tools if t in registry.names()]
        hold.open(self._estimate(spec, llm, registry, allowed))  # reserved while recall runs

        idle = _Idle(log, hold, lambda: history(self.db, spec.tenant, spec.session_id,
                                                HISTORY_TURNS))
        if not spec.calls and (not allowed or spec.tool_choice == "none" or not spec.max_steps):
            idle.history_now()  # no step will wait before the answer needs it: read it now
        try:
            # 1. recall
            evidence: list[dict[str, Any]] = []
            if spec.memory != "none":
                found = await recall(self.db, self.embedder, spec.tenant, RecallQuery(
                    spec.text, namespace=persona.namespace, top_k=5, include_scores=False),
                    candidates=self.settings.recall_candidates)
                evidence = [{"id": str(e.memory["id"]), "content": e.memory["content"],
                             "score": round(float(e.score), 4)} for e in found.evidence]
                tally.embed_ms += found.timings_ms.get("wait", 0.0)  # the query embedding
            yield log.add("recall", {"namespace": persona.namespace,
                                     "ids": [e["id"] for e in evidence], "evidence": evidence})
            async with aclosing(self._steps(spec, log, tally, hold, llm, registry, allowed,
                                            evidence, idle)) as events:
                async for event in events:
                    yield event
        finally:
            idle.cancel()

    async def _steps(self, spec: TurnSpec, log: EventLog, tally: _Tally, hold: Hold,
                     llm: MeteredLLM, registry: ToolRegistry, allowed: list[str],
                     evidence: list[dict[str, Any]], idle: _Idle
                     ) -> AsyncGenerator[dict[str, Any], None]:
        """Plan, tools, answer, verify, remember, usage (the turn after its recall)."""
        persona = spec.persona
        tally.lap("recall")
        # 2. plan
        steps: list[dict[str, Any]] = [{"tool": c["tool"]} for c in spec.calls]
        plan_error: ModelOutputInvalid | None = None
        if not steps and allowed and spec.tool_choice != "none" and spec.max_steps > 0:
            try:
                idle()
                plan = await self._model(llm, tally, ChatRequest(
                    messages=_plan_messages(persona, spec.text, registry, allowed, evidence),
                    json_schema=plan_schema(allowed, spec.max_steps,
                                            spec.tool_choice == "required"),
                    max_tokens=self._cap(spec, 64 + 32 * spec.max_steps)))
                steps = plan.data["steps"]
            except ModelOutputInvalid as exc:  # no usable plan: answer without tools
                plan_error = exc
        yield log.add("plan", {"steps": steps, "source": "client" if spec.calls else "model",
                               "tools_allowed": allowed, "max_steps": spec.max_steps,
                               "providers": persona.providers})
        if plan_error is not None:
            yield log.add("error", error_data(plan_error, fatal=False, stage="plan"))

        tally.lap("plan")
        # 3. tools
        results: list[dict[str, Any]] = []
        broker = ToolBroker(registry, self.db, authorize=_authorizer(spec.authorize),
                            budget=LedgerBudget(self.db, self.prices, hold), sandbox=self.sandbox,
                            idempotency_ttl_s=self.settings.tool_idempotency_ttl_s)
        ctx = ToolContext(spec.tenant, persona.name, spec.session_id, spec.trace_id,
                          frozenset(allowed))
        for i, step in enumerate(steps):
            tool = registry.get(step["tool"])
            call_id = f"{spec.turn_id}.{i + 1}"
            if spec.calls:
                args = spec.calls[i]["arguments"]
            else:
                try:
                    idle()
                    call = await self._model(llm, tally, ChatRequest(
                        messages=_args_messages(tool, spec.text, evidence, results),
                        tools=[tool.spec()], tool_choice="required",
                        max_tokens=self._cap(spec, ARGS_MAX_TOKENS)))
                except ModelOutputInvalid as exc:  # unusable arguments: this step fails, go on
                    results.append({"call_id": call_id, "tool": tool.name, "ok": False,
                                    "result": {"error": exc.detail}})
                    yield log.add("error", error_data(exc, fatal=False, stage="tool.arguments",
                                                      call_id=call_id, tool=tool.name))
                    continue
                args = call.tool_calls[0].arguments
            yield log.add("tool.call", {"call_id": call_id, "tool": tool.name, "arguments": args,
                                        "step": i + 1})
            async for event in self._tool(broker, ctx, spec, tool, args, call_id, log, tally,
                                          results, idle):
                yield event

        tally.lap("tools")
        # 4. answer (streamed), 5. verify, then the final answer
        parts: list[str] = []
        final: Completion | None = None
        past = await idle.history()
        request = ChatRequest(messages=_answer_messages(persona, spec.text, evidence, results, past),
                              max_tokens=self._cap(spec, self.settings.llm_max_tokens))
        # until the stream ends, count what the ledger would charge an abandoned stream
        tally.streaming = prompt_token_bound(request)
        before = llm.provider_ms
        idle()
        try:
            async with aclosing(llm.stream(request)) as chunks:
                async for chunk in chunks:
                    if chunk.completion is not None:
                        final = chunk.completion
                    elif chunk.delta:
                        parts.append(chunk.delta)
                        tally.streaming += 1
                        yield log.add("answer", {"delta": chunk.delta})
        finally:
            tally.model_ms += llm.provider_ms - before
        assert final is not None
        tally.streaming = 0
        tally.count(final, 0.0)
        answer = final.text.strip() or "".join(parts).strip()
        grounds = [Ground("memory", e["id"], e["content"]) for e in evidence] + [
            Ground("tool", r["call_id"], tool_text(r["result"], RESULT_CHARS))
            for r in results if r["ok"]]
        checked = verify(answer, spec.text, grounds, results)
        yield log.add("verify", checked)
        yield log.add("answer", {"final": True, "text": answer, "verdict": checked["verdict"],
                                 "citations": checked["citations"], "provider": final.provider,
                                 "model": final.model, "fallbacks": tally.fallbacks})

        tally.lap("answer")
        # 6. remember
        if spec.memory != "readwrite" or not answer:
            yield log.add("remember", {"ids": [], "skipped": f"memory access is {spec.memory!r}"})
        elif checked["verdict"] == "unsupported":  # never let a made-up answer become evidence
            yield log.add("remember", {"ids": [], "skipped": "the answer failed verification"})
        else:
            written = await self._remember(spec, hold, answer, checked["verdict"], tally)
            yield log.add("remember", {"ids": written, "namespace": persona.namespace})
        tally.lap("remember")
        yield log.add("usage", tally.report(self.prices, final.provider))
        # the rest of the events and the ledger are written when the turn closes (see drive)

    def _estimate(self, spec: TurnSpec, llm: MeteredLLM, registry: ToolRegistry,
                  allowed: list[str]) -> Amounts:
        """An estimate of the whole turn's worst case, for its hold: every model call's
        max_tokens plus a prompt bound, the dearest allowed tool per step, the remembered
        exchange. A step that needs more extends the hold."""
        s = self.settings
        steps = len(spec.calls) or (spec.max_steps if allowed and spec.tool_choice != "none"
                                    else 0)
        prompt = (len(spec.persona.system_prompt.encode()) + len(spec.text.encode())
                  + 5 * EVIDENCE_CHARS) // 2 + 64
        tokens = self._cap(spec, s.llm_max_tokens) + prompt + steps * RESULT_CHARS // 2
        if steps and not spec.calls:  # the plan, then each step's arguments
            tokens += prompt + self._cap(spec, 64 + 32 * steps) + steps * (
                prompt + self._cap(spec, ARGS_MAX_TOKENS) + 400)
        tools = [registry.get(t) for t in allowed]
        worst = llm.dearest(tokens)
        per_tool = max((self.prices.charge(tool_calls=1, egress_bytes=t.max_egress_bytes,
                                           storage_bytes=t.max_storage_bytes,
                                           extra_cents=t.cost_cents) for t in tools),
                       key=lambda a: a.cost_cents, default=Amounts())
        memory = (self.prices.charge(storage_bytes=len(spec.text.encode()) + 4 * self._cap(
            spec, s.llm_max_tokens) + 8) if spec.memory == "readwrite" else Amounts())
        parts = [worst, memory] + [per_tool] * (steps if tools else 0)
        return Amounts(*(sum(v) for v in zip(*(p.values() for p in parts), strict=True)))

    def _cap(self, spec: TurnSpec, tokens: int) -> int:
        return min(tokens, self.settings.llm_max_tokens, spec.max_tokens or tokens)

    async def _model(self, llm: MeteredLLM, tally: _Tally, request: ChatRequest) -> Completion:
        before = llm.provider_ms  # the model's own time; the ledger's holds are overhead
        try:
            completion = await llm.complete(request)
        except ModelOutputInvalid as exc:  # it ran and was charged: count its time and tokens
            tally.model_ms += llm.provider_ms - before
            tally.completion_tokens += exc.usage_tokens
            raise
        except BaseException:
            tally.model_ms += llm.provider_ms - before
            raise
        tally.count(completion, llm.provider_ms - before)
        return completion

    async def _tool(self, broker: ToolBroker, ctx: ToolContext, spec: TurnSpec, tool: ToolDef,
                    args: dict[str, Any], call_id: str, log: EventLog, tally: _Tally,
                    results: list[dict[str, Any]], idle: _Idle
                    ) -> AsyncGenerator[dict[str, Any], None]:
        started = time.perf_counter()
        try:
            retry = await spec.tool_rate() if spec.tool_rate is not None else None
            if retry is not None:
                raise RateLimited(f"this session's tools_per_min is used up; retry in {retry} s",
                                  field="budgets.tools_per_min", retry_after_s=retry)
            # no per-call idempotency key: a turn never runs twice (its Idempotency-Key replays
            # the stored events), so a step cannot be retried into a second run
            async with aclosing(broker.call(ctx, tool.name, args, call_id=call_id,
                                            on_start=idle)) as events:
                async for event in events:
                    if isinstance(event, ToolDelta):
                        yield log.add("tool.delta", {"call_id": call_id, "tool": tool.name,
                                                     "text": event.text})
                    elif isinstance(event, ToolDone):
                        tally.tools_ms += event.run_ms
                        tally.tool_calls += 0 if event.replayed else 1
                        tally.egress_bytes += event.egress_bytes
                        tally.storage_bytes += event.storage_bytes
                        results.append({"call_id": call_id, "tool": tool.name, "ok": True,
                                        "result": event.result})
                        yield log.add("tool.done", {
                            "call_id": call_id, "tool": tool.name, "ok": True,
                            "result": event.result, "replayed": event.replayed,
                            "duration_ms": event.duration_ms, "run_ms": event.run_ms})
        except BudgetExhausted:
            raise
        except SomaError as exc:  # the call failed: say so, audit it, and answer without it
            results.append({"call_id": call_id, "tool": tool.name, "ok": False,
                            "result": {"error": exc.detail}})
            refused = not isinstance(exc, ToolFailed)  # gates refuse; ToolFailed means it ran
            if not refused:  # it ran (and the broker charged it): its time is the tool's
                tally.tool_calls += 1
                tally.tools_ms += (time.perf_counter() - started) * 1000
            await audit.record(self.db, audit.AuditEvent(
                actor=spec.actor, tenant_id=spec.tenant, action="tool.call", resource=tool.name,
                decision="deny" if refused else "error", reasons=[exc.detail],
                trace_id=spec.trace_id, payload={"turn_id": spec.turn_id, "call_id": call_id,
                                                 "error_type": exc.type, "field": exc.field}))
            yield log.add("tool.done", {"call_id": call_id, "tool": tool.name, "ok": False,
                                        "error": exc.type})
            yield log.add("error", error_data(exc, fatal=False, call_id=call_id))

    async def _remember(self, spec: TurnSpec, hold: Hold, answer: str, verdict: str,
                        tally: _Tally) -> list[str]:
        content = f"Q: {spec.text}\nA: {answer}"[: self.settings.max_content_bytes // 4]
        size = len(content.encode())
        cost = self.prices.charge(storage_bytes=size)
        # Embedded first, then written: remember() could read the existing rows while it embeds,
        # but on two cores that read then competes with the model run, and is slower than alone.
        vector = asyncio.create_task(self.embedder.embed([content]))  # while the hold is checked
        try:
            draw = await hold.take(cost)  # exact before it runs
        finally:
            waited = time.perf_counter()
            embedding = (await vector)[0]
            tally.embed_ms += (time.perf_counter() - waited) * 1000
        try:
            (written,) = await remember(self.db, self.embedder, spec.tenant, [MemoryDraft(
                namespace=spec.persona.namespace, content=content, kind="episodic",
                key=f"turn:{spec.turn_id}", source=f"agent:{spec.persona.name}",
                trace_id=spec.trace_id, tags=["turn"], embedding=[float(x) for x in embedding],
                embedder=self.embedder.id,
                metadata={"turn_id": spec.turn_id, "session_id": spec.session_id,
                          "verdict": verdict})],
                max_bytes=self.settings.max_content_bytes)
        except BaseException:
            await hold.give_back(draw)
            raise
        await hold.spend(draw, cost)
        tally.storage_bytes += size
        return [str(written.id)]


async def drive(runtime: Runtime, spec: TurnSpec, log: EventLog
                ) -> AsyncGenerator[dict[str, Any], None]:
    """Run the turn and record how it ended: done, error (with a fatal `error` event and the
    usage so far) or cancelled (the consumer went away: the partial turn is kept)."""
    tally = _Tally()
    hold = runtime.hold(spec)
    provider = spec.persona.providers[0]
    answer: str | None = None
    status, error = "done", None
    try:
        async with aclosing(runtime.run(spec, log, tally, hold)) as events:
            async for event in events:
                if event["type"] == "answer" and event["data"].get("final"):
                    answer = event["data"]["text"]
                yield event
    except asyncio.CancelledError:
        status, error = "cancelled", {"type": "cancelled", "detail": "the client went away",
                                      "fatal": True}
        log.add("error", error)
        log.add("usage", tally.report(runtime.prices, provider))
        await _close(runtime, spec, log, status, answer, error, tally, hold)
        raise
    except Exception as exc:
        if not isinstance(exc, SomaError):
            log_.exception("turn %s failed", spec.turn_id)
            exc = SomaError(f"the turn failed: {type(exc).__name__}")
        status, error = "error", error_data(exc, fatal=True)
        yield log.add("error", error)
        yield log.add("usage", tally.report(runtime.prices, provider))
    await _close(runtime, spec, log, status, answer, error, tally, hold)


async def _close(runtime: Runtime, spec: TurnSpec, log: EventLog, status: str,
                 answer: str | None, error: dict[str, Any] | None, tally: _Tally,
                 hold: Hold) -> None:
    try:  # the ledger first: every spend written, the rest of the hold given back
        await hold.close()
    finally:
        await log.drain()  # events before the status: a reader that sees it has every event
    usage = tally.report(runtime.prices, spec.persona.providers[0])
    await finish_turn(runtime.db, spec.tenant, spec.turn_id, status=status, answer=answer,
                      error=error, usage=usage, fallbacks=tally.fallbacks)
    await audit.record(runtime.db, audit.AuditEvent(
        actor=spec.actor, tenant_id=spec.tenant, action="turn.run", resource=f"turn:{spec.turn_id}",
        decision="allow", trace_id=spec.trace_id, reasons=[error["detail"]] if error else [],
        payload={"status": status, "session_id": spec.session_id,
                 "persona_hash": spec.persona.hash, "events": log.seq, "usage": usage}))


class _Idle:
    """Called as the turn starts waiting on a model, or on a tool that passed its gates: the
    moment to start its deferred work in the background, off the turn's own steps: the events
    so far and the ledger's usage are written, and (the first time) the session's last turns,
    which only the answer needs, are read."""

    def __init__(self, log: EventLog, hold: Hold,
                 read_history: Callable[[], Awaitable[list[tuple[str, str]]]]) -> None:
        self.log, self.hold, self._read = log, hold, read_history
        self._past: asyncio.Task[list[tuple[str, str]]] | None = None

    def __call__(self) -> None:
        self.log.flush()
        self.hold.flush()
        self.history_now()

    def history_now(self) -> None:
        if self._past is None:
            self._past = asyncio.ensure_future(self._read())

    async def history(self) -> list[tuple[str, str]]:
        self.history_now()
        assert self._past is not None
        return await self._past

    def cancel(self) -> None:
        if self._past is not None and not self._past.done():
            self._past.cancel()


def _authorizer(authorize: AuthorizeTool) -> Any:
    async def check(ctx: ToolContext, tool: ToolDef, args: dict[str, Any]) -> Decision:
        return await authorize(tool.name, args)  # type: ignore[no-any-return]
    return check


def plan_schema(tools: list[str], max_steps: int, required: bool) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["steps"],
            "properties": {"steps": {
                "type": "array", "minItems": 1 if required else 0, "maxItems": max_steps,
                "items": {"type": "object", "additionalProperties": False, "required": ["tool"],
                          "properties": {"tool": {"enum": tools}}}}}}


def _facts(evidence: list[dict[str, Any]]) -> str:
    return "\n".join(f"- {e['content'][:EVIDENCE_CHARS]}" for e in evidence)


def _plan_messages(persona: PersonaLike, text: str, registry: ToolRegistry, allowed: list[str],
                   evidence: list[dict[str, Any]]) -> list[Message]:
    tools = "\n".join(f"- {n}: {registry.get(n).description}" for n in allowed)
    facts = f"Known facts:\n{_facts(evidence)}\n" if evidence else ""
    return [Message("system", persona.system_prompt),
            Message("user", f"{facts}Tools:\n{tools}\nQuestion: {text}\n"
                            "Which tools should be used, in order?")]


def _args_messages(tool: ToolDef, text: str, evidence: list[dict[str, Any]],
                   results: list[dict[str, Any]]) -> list[Message]:
    done = "".join(f"\nEarlier result of {r['tool']}: {tool_text(r['result'], 300)}"
                   for r in results)
    facts = f"\nKnown facts:\n{_facts(evidence)}" if evidence else ""
    messages = [Message("system", f"Call the tool {tool.name}: {tool.description}")]
    if tool.example is not None:
        request, arguments = tool.example
        messages += [Message("user", request), Message("assistant", tool_calls=[
            ToolCall("example", tool.name, arguments)])]
    messages.append(Message("user", f"{text}{facts}{done}"))
    return messages


def _answer_messages(persona: PersonaLike, text: str, evidence: list[dict[str, Any]],
                     results: list[dict[str, Any]], past: list[tuple[str, str]]
                     ) -> list[Message]:
    context = ""
    if evidence:
        context += f"Known facts:\n{_facts(evidence)}\n"
    for r in results:  # a failed call's error text is for the client, not for the answer
        if r["ok"]:
            context += f"Result of {r['tool']}: {tool_text(r['result'], RESULT_CHARS)}\n"
    messages = [Message("system", persona.system_prompt)]
    for question, answer in past:
        messages += [Message("user", question), Message("assistant", answer)]
    messages.append(Message("user", f"{context}{text}" if context else text))
    return messages
