"""The tool broker end to end on the real PostgreSQL and the real sandbox: every gate, the
ledger, idempotency, rate limits, streaming and cleanup."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from somastack.agent.tools import (
    Decision,
    LedgerBudget,
    Sandbox,
    SandboxLimits,
    ToolBroker,
    ToolContext,
    ToolDef,
    ToolDelta,
    ToolDone,
    ToolOutput,
    ToolRegistry,
    python_eval_tool,
)
from somastack.config import Settings
from somastack.errors import (
    BudgetExhausted,
    Conflict,
    InvalidInput,
    RateLimited,
    StoreUnavailable,
    ToolFailed,
    ToolNotAllowed,
    ToolTimeout,
)
from somastack.ledger import Limits, PriceTable, set_budget
from somastack.store import Database

PRICES = PriceTable.from_mapping({"tool_call": 1})
OBJ = {"type": "object"}


async def allow_unless_forbidden(ctx: ToolContext, tool: ToolDef, args: dict[str, Any]
                                 ) -> Decision:
    """A real policy: deny any call whose arguments mention 'forbidden'."""
    if "forbidden" in str(args):
        return Decision(False, "arguments mention a forbidden thing")
    return Decision(True)


class Counter:
    """A python tool that counts its runs (to prove a replay did not run it)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.runs = 0
        self.fail_first = fail_first

    async def __call__(self, ctx: ToolContext, args: dict[str, Any]
                       ) -> AsyncGenerator[str | ToolOutput, None]:
        self.runs += 1
        if self.runs <= self.fail_first:
            raise RuntimeError("transient")
        yield f"run {self.runs}"
        yield ToolOutput({"n": args["n"] * 2, "run": self.runs})


def counter_tool(run: Counter, **kw: Any) -> ToolDef:
    return ToolDef("test.count", "Double n.", {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
        "additionalProperties": False}, {"type": "object", "required": ["n"]}, run=run, **kw)


@pytest.fixture
def broker_for(database: Database, settings: Settings) -> Callable[..., ToolBroker]:
    def make(*tools: ToolDef, timeout_s: float = 2.0) -> ToolBroker:
        sandbox = Sandbox(settings, SandboxLimits(cpu_s=2, timeout_s=timeout_s,
                                                  output_bytes=128 * 1024))
        return ToolBroker(ToolRegistry([python_eval_tool(), *tools]), database,
                          authorize=allow_unless_forbidden, budget=LedgerBudget(database, PRICES),
                          sandbox=sandbox)
    return make


def ledger(db: psycopg.Connection, tenant: str) -> tuple[int, Decimal]:
    row = db.execute("SELECT coalesce(sum(tool_calls), 0), coalesce(sum(cost_cents), 0) "
                     "FROM usage_ledger WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row is not None
    return int(row[0]), Decimal(row[1])


async def events(broker: ToolBroker, ctx: ToolContext, name: str, args: dict[str, Any],
                 **kw: Any) -> list[ToolDelta | ToolDone]:
    async with aclosing(broker.call(ctx, name, args, **kw)) as stream:
        return [e async for e in stream]


@pytest.mark.asyncio
async def test_python_eval_streams_and_is_settled(
    broker_for: Callable[..., ToolBroker], tenant: str, db: psycopg.Connection
) -> None:
    broker = broker_for()
    ctx = ToolContext(tenant, agent="a", session="s")
    out = await events(broker, ctx, "python.eval", {"code": "for i in range(3): print(i)"})
    *deltas, done = out
    assert all(isinstance(d, ToolDelta) for d in deltas) and isinstance(done, ToolDone)
    assert "".join(d.text for d in deltas) == "0\n1\n2\n"  # type: ignore[union-attr]
    assert done.result == {"exit_code": 0, "stdout": "0\n1\n2\n", "stderr": ""}
    assert not done.replayed and done.call_id.startswith("tc_")
    assert ledger(db, tenant) == (1, Decimal(1))


@pytest.mark.asyncio
async def test_gates_refuse_before_anything_runs_or_is_charged(
    broker_for: Callable[..., ToolBroker], tenant: str, db: psycopg.Connection
) -> None:
    run = Counter()
    broker = broker_for(counter_tool(run))
    ctx = ToolContext(tenant, allow=frozenset({"test.count"}))
    cases: list[tuple[str, Any, type[Exception], str]] = [
        ("web.search", {"q": "x"}, ToolNotAllowed, "tool"),
        ("python.eval", {"code": "print(1)"}, ToolNotAllowed, "tool"),  # not on the allow-list
        ("test.count", {}, InvalidInput, "arguments.n"),
        ("test.count", {"n": "two"}, InvalidInput, "arguments.n"),
        ("test.count", {"n": 1, "extra": True}, InvalidInput, "arguments.extra"),
        ("test.count", [1], InvalidInput, "arguments"),
    ]
    for name, args, error, field in cases:
        with pytest.raises(error) as err:
            await broker.run(ctx, name, args)
        assert err.value.field == field, (name, args)  # type: ignore[attr-defined]
    forbidden_ctx = ToolContext(tenant)
    with pytest.raises(ToolNotAllowed, match="denied by policy"):
        await broker.run(forbidden_ctx, "python.eval", {"code": "print('forbidden')"})
    assert run.runs == 0 and ledger(db, tenant) == (0, Decimal(0))


@pytest.mark.asyncio
async def test_budget_exhausted_stops_the_call_cleanly(
    broker_for: Callable[..., ToolBroker], database: Database, tenant: str,
    db: psycopg.Connection
) -> None:
    run = Counter()
    broker = broker_for(counter_tool(run, cost_cents=Decimal("0.5")))
    await set_budget(database, tenant, "session:s1", Limits(cost_cents=Decimal(2)))
    ctx = ToolContext(tenant, session="s1")
    assert (await broker.run(ctx, "test.count", {"n": 1})).result["n"] == 2  # costs 1.5
    with pytest.raises(BudgetExhausted) as err:
        await broker.run(ctx, "test.count", {"n": 2})
    assert err.value.field == "cost_cents" and run.runs == 1
    assert ledger(db, tenant) == (1, Decimal("1.5"))


@pytest.mark.asyncio
async def test_idempotency_key_returns_the_first_result(
    broker_for: Callable[..., ToolBroker], tenant: str, db: psycopg.Connection
) -> None:
    run = Counter(fail_first=1)
    broker = broker_for(counter_tool(run))
    ctx = ToolContext(tenant)
    with pytest.raises(ToolFailed, match="transient"):  # a failed first try keeps no result
        await broker.run(ctx, "test.count", {"n": 5}, idempotency_key="k1")
    first = await broker.run(ctx, "test.count", {"n": 5}, idempotency_key="k1")
    again = await broker.run(ctx, "test.count", {"n": 5}, idempotency_key="k1")
    assert first.result == again.result == {"n": 10, "run": 2}
    assert (first.replayed, again.replayed) == (False, True) and run.runs == 2
    with pytest.raises(Conflict) as err:
        await broker.run(ctx, "test.count", {"n": 6}, idempotency_key="k1")
    assert err.value.field == "idempotency_key"
    assert ledger(db, tenant)[0] == 2  # the failed try and the first success; not the replay
    row = db.execute("SELECT key, status, expires_at - created_at FROM tool_idempotency "
                     "WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row is not None and row[0] == "idem:test.count:k1" and row[1] == "done"
    assert row[2].total_seconds() == 24 * 3600
    other = await broker.run(ToolContext(f"t-{uuid.uuid4().hex[:12]}"), "test.count", {"n": 5},
                             idempotency_key="k1")
    assert not other.replayed  # keys are per tenant


@pytest.mark.asyncio
async def test_rate_limit_per_tool_per_minute(
    broker_for: Callable[..., ToolBroker], tenant: str, db: psycopg.Connection
) -> None:
    broker = broker_for(counter_tool(Counter(), rate_limit_per_min=2))
    ctx = ToolContext(tenant)
    for n in range(2):
        await broker.run(ctx, "test.count", {"n": n})
    with pytest.raises(RateLimited):
        await broker.run(ctx, "test.count", {"n": 3})
    assert ledger(db, tenant)[0] == 2


@pytest.mark.asyncio
async def test_hanging_tool_times_out_is_charged_and_retryable(
    broker_for: Callable[..., ToolBroker], tenant: str, db: psycopg.Connection,
    live_processes: Callable[[str], list[int]]
) -> None:
    broker = broker_for(timeout_s=1.0)
    marker = f"hang-{uuid.uuid4().hex}"
    code = f"# {marker}\nimport time\ntime.sleep(60)"
    with pytest.raises(ToolTimeout):
        await broker.run(ToolContext(tenant), "python.eval", {"code": code}, idempotency_key="h")
    assert live_processes(marker) == [] and ledger(db, tenant)[0] == 1
    assert db.execute("SELECT count(*) FROM tool_idempotency WHERE tenant_id = %s",
                      (tenant,)).fetchone() == (0,)


@pytest.mark.asyncio
async def test_abandoned_call_kills_the_tool_and_settles(
    broker_for: Callable[..., ToolBroker], tenant: str, db: psycopg.Connection,
    live_processes: Callable[[str], list[int]]
) -> None:
    broker = broker_for()
    marker = f"tick-{uuid.uuid4().hex}"
    code = f"# {marker}\nimport time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)"
    async with aclosing(broker.call(ToolContext(tenant), "python.eval", {"code": code})) as stream:
        async for event in stream:
            assert isinstance(event, ToolDelta)
            break
    assert live_processes(marker) == [] and ledger(db, tenant)[0] == 1


@pytest.mark.asyncio
async def test_bad_result_and_tool_bugs_are_tool_failed(
    broker_for: Callable[..., ToolBroker], tenant: str
) -> None:
    async def wrong(ctx: ToolContext, args: dict[str, Any]) -> AsyncGenerator[str | ToolOutput, None]:
        yield ToolOutput({"n": "not a number"})

    async def silent(ctx: ToolContext, args: dict[str, Any]) -> AsyncGenerator[str | ToolOutput, None]:
        yield "no result follows"

    shape = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    broker = broker_for(ToolDef("test.wrong", "d", OBJ, shape, run=wrong),
                        ToolDef("test.silent", "d", OBJ, shape, run=silent))
    with pytest.raises(ToolFailed) as err:
        await broker.run(ToolContext(tenant), "test.wrong", {})
    assert err.value.field == "result.n"
    with pytest.raises(ToolFailed) as err:
        await broker.run(ToolContext(tenant), "test.silent", {})
    assert err.value.field == "result"


def test_registry_checks_definitions() -> None:
    async def run(ctx: ToolContext, args: dict[str, Any]) -> AsyncGenerator[str | ToolOutput, None]:
        yield ToolOutput({})

    registry = ToolRegistry([ToolDef("a.b", "d", OBJ, OBJ, run=run)])
    cases: list[tuple[ToolDef, type[Exception], str]] = [
        (ToolDef("a.b", "d", OBJ, OBJ, run=run), Conflict, "name"),
        (ToolDef("Bad Name", "d", OBJ, OBJ, run=run), InvalidInput, "name"),
        (ToolDef("a.c", "d", {"type": "nope"}, OBJ, run=run), InvalidInput, "args_schema"),
        (ToolDef("a.c", "d", OBJ, {"required": 3}, run=run), InvalidInput, "result_schema"),
        (ToolDef("a.c", "d", OBJ, OBJ), InvalidInput, "run"),
        (ToolDef("a.c", "d", OBJ, OBJ, kind="sandbox"), InvalidInput, "job"),
        (ToolDef("a.c", "d", OBJ, OBJ, run=run, rate_limit_per_min=0), InvalidInput,
         "rate_limit_per_min"),
    ]
    for tool, error, field in cases:
        with pytest.raises(error) as err:
            registry.register(tool)
        assert err.value.field == field  # type: ignore[attr-defined]
    assert [s.name for s in registry.specs(frozenset({"a.b", "x"}))] == ["a.b"]


class Gated:
    """An authorizer whose decision's audit row is committed only when the test says so (or
    fails then): the broker must hold every output of a call until that row is committed."""

    def __init__(self, fails: bool = False) -> None:
        self.commit = asyncio.Event()
        self.fails = fails

    async def _row(self) -> None:
        await self.commit.wait()
        if self.fails:
            raise StoreUnavailable("the audit row could not be written")

    async def __call__(self, ctx: ToolContext, tool: ToolDef, args: dict[str, Any]) -> Decision:
        return Decision(True, audited=asyncio.ensure_future(self._row()))


class Started:
    """A python tool that notes when it starts running."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def __call__(self, ctx: ToolContext, args: dict[str, Any]
                       ) -> AsyncGenerator[str | ToolOutput, None]:
        self.started.set()
        yield "looking"
        yield ToolOutput({"n": args["n"]})


def gated_broker(database: Database, authorize: Gated, tool: ToolDef) -> ToolBroker:
    return ToolBroker(ToolRegistry([tool]), database, authorize=authorize,
                      budget=LedgerBudget(database, PRICES))


@pytest.mark.asyncio
async def test_read_only_tool_runs_while_its_audit_row_is_written_but_nothing_leaves_before(
    database: Database, tenant: str
) -> None:
    run, gate = Started(), Gated()
    broker = gated_broker(database, gate, counter_tool(run, read_only=True))  # type: ignore[arg-type]
    seen: list[ToolDelta | ToolDone] = []

    async def consume() -> None:
        async with aclosing(broker.call(ToolContext(tenant), "test.count", {"n": 2})) as stream:
            async for event in stream:
                seen.append(event)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(run.started.wait(), 5)  # it runs before the row is committed...
    await asyncio.sleep(0.05)
    assert seen == []  # ...but neither its delta nor its result has left the broker
    gate.commit.set()
    await asyncio.wait_for(task, 5)
    assert [type(e) for e in seen] == [ToolDelta, ToolDone] and seen[-1].result == {"n": 2}


@pytest.mark.asyncio
async def test_other_tools_run_only_after_their_audit_row_is_committed(
    database: Database, tenant: str
) -> None:
    run, gate = Started(), Gated()
    broker = gated_broker(database, gate, counter_tool(run))  # type: ignore[arg-type]
    task = asyncio.create_task(events(broker, ToolContext(tenant), "test.count", {"n": 3}))
    await asyncio.sleep(0.1)
    assert not run.started.is_set()
    gate.commit.set()
    *_, done = await asyncio.wait_for(task, 5)
    assert run.started.is_set() and isinstance(done, ToolDone) and done.result == {"n": 3}


@pytest.mark.asyncio
async def test_read_only_result_is_withheld_when_its_audit_row_fails(
    database: Database, tenant: str, db: psycopg.Connection
) -> None:
    run, gate = Started(), Gated(fails=True)
    broker = gated_broker(database, gate, counter_tool(run, read_only=True))  # type: ignore[arg-type]
    task = asyncio.create_task(events(broker, ToolContext(tenant), "test.count", {"n": 4}))
    await asyncio.wait_for(run.started.wait(), 5)
    gate.commit.set()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(task, 5)
    assert ledger(db, tenant) == (1, Decimal(1))  # it ran, so it was charged, once
