"""The policy decision point: authorize(subject, action, resource, context) → allow + reasons.

Rego modules ship in `somastack/policies/` (package soma.authz); a tenant may store one override
module (package soma.tenant) whose `deny` set can only add denials. Deny by default, deny on any
evaluation error or timeout, and audit every decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row

from somastack.governance import audit
from somastack.governance.canonical import sha3_512_hex
from somastack.governance.constitution import Active
from somastack.governance.keys import CACHE_TTL_S
from somastack.governance.principal import Principal
from somastack.governance.rego_worker import RegoFailure, RegoPool
from somastack.store import Database

DECISION_QUERY = "x = data.soma.authz.decision"
TENANT_PACKAGE = "soma.tenant"
MAX_MODULE_BYTES = 64 * 1024
_PACKAGE_RE = re.compile(r"^\s*package\s+([\w.]+)", re.MULTILINE)
_TEST_RE = re.compile(r"^(test_\w+)\s", re.MULTILINE)
# Builtins whose value can change between two evaluations of the same input: a policy using
# one is evaluated every time; any other policy is a pure function of (modules, input).
_IMPURE_RE = re.compile(r"\b(time\.|rand\.|uuid\.|http\.send|opa\.runtime|net\.)")
_CONTEXT_RE = re.compile(r"\.context\b")  # a policy that reads input.context (per-request data)
DECISION_CACHE_SIZE = 4096
OVERRIDE_CACHE_SIZE = 10_000
log = logging.getLogger("somastack.policy")
_decisions: dict[int, OrderedDict[str, Decision]] = {}  # per evaluator pool


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: list[str]
    error: bool = False


@dataclass(frozen=True)
class TestResult:
    package: str
    name: str
    passed: bool
    message: str = ""


@dataclass
class Request:
    """One question to the decision point."""

    subject: Principal
    action: str
    resource: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None


def base_modules(include_tests: bool = False) -> dict[str, str]:
    """The shipped policy modules by file name (tests only when asked)."""
    folder = resources.files("somastack") / "policies"
    return {f.name: f.read_text() for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".rego") and (include_tests or not f.name.endswith("_test.rego"))}


def package_of(source: str) -> str | None:
    m = _PACKAGE_RE.search(source)
    return m.group(1) if m else None


async def check_override(pool: RegoPool, module: str) -> None:
    """ValueError unless the module is package soma.tenant and compiles with the base policy."""
    if len(module.encode()) > MAX_MODULE_BYTES:
        raise ValueError(f"the module is over {MAX_MODULE_BYTES} bytes")
    if package_of(module) != TENANT_PACKAGE:
        raise ValueError(f"the module must declare `package {TENANT_PACKAGE}`")
    try:
        await pool.query({**base_modules(), "tenant.rego": module}, {}, "x = data.soma.tenant")
    except RegoFailure as exc:
        if exc.kind != "runtime":  # runtime errors depend on the input; compile errors do not
            raise ValueError(f"the module does not compile: {exc}") from exc


_MISSING = object()


class Overrides:
    """Tenants' policy overrides read in the last `ttl_s` seconds (a tenant without one is
    remembered as None), under the contract of keys.VerifiedKeys: an entry is dropped at once
    when the override is set or cleared in this process, a few milliseconds after the commit
    elsewhere (audit announces `policy.*`), and `ttl_s` after it was read at the latest; a read
    that started before an announcement is not stored."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self.epoch = 0
        self._entries: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._refreshing: set[str] = set()

    def due(self, tenant_id: str) -> bool:
        """True (once) when a served entry is past half its TTL (see keys.VerifiedKeys.due)."""
        entry = self._entries.get(tenant_id)
        if entry is None or tenant_id in self._refreshing:
            return False
        if entry[0] - time.monotonic() > self.ttl_s / 2:
            return False
        self._refreshing.add(tenant_id)
        return True

    def refreshed(self, tenant_id: str) -> None:
        self._refreshing.discard(tenant_id)

    def get(self, tenant_id: str) -> Any:
        """The override (None: the tenant has none), or _MISSING when not remembered."""
        entry = self._entries.get(tenant_id)
        if entry is None or entry[0] <= time.monotonic():
            return _MISSING
        return entry[1]

    def put(self, tenant_id: str, row: dict[str, Any] | None, epoch: int) -> None:
        if epoch != self.epoch:
            return
        now = time.monotonic()
        if len(self._entries) >= OVERRIDE_CACHE_SIZE:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
        self._entries[tenant_id] = (now + self.ttl_s, row)

    def forget(self, tenant_id: str | None = None) -> None:
        self.epoch += 1
        if tenant_id is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant_id, None)

    def on_change(self, payload: str | None) -> None:
        change = audit.announcement(payload)
        if change is None:
            self.forget()
        elif str(change.get("action", "")).startswith("policy."):
            self.forget(str(change.get("tenant_id")))


OVERRIDES = Overrides()
audit.watch(OVERRIDES.on_change)


async def current_override(db: Database, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's override, remembered for a few seconds (see Overrides)."""
    known = OVERRIDES.get(tenant_id)
    if known is not _MISSING:
        if OVERRIDES.due(tenant_id):
            task = asyncio.ensure_future(_reread_override(db, tenant_id))
            _refreshing.add(task)
            task.add_done_callback(_refreshing.discard)
        return known  # type: ignore[no-any-return]
    audit.listen(db)
    return await _read_override(db, tenant_id)


async def _read_override(db: Database, tenant_id: str) -> dict[str, Any] | None:
    epoch = OVERRIDES.epoch
    async with db.pool.connection() as conn:  # one read: no transaction, one round trip
        row = await get_override(conn, tenant_id)
    OVERRIDES.put(tenant_id, row, epoch)
    return row


_refreshing: set[asyncio.Future[Any]] = set()


async def _reread_override(db: Database, tenant_id: str) -> None:
    """Read a remembered override again in the background, so a tenant in steady use never
    waits for it (and is never decided on a read older than the TTL)."""
    try:
        await _read_override(db, tenant_id)
    except Exception:  # the database is unreachable: the entry expires as it would have
        log.warning("refreshing the policy override of %s failed", tenant_id, exc_info=True)
    finally:
        OVERRIDES.refreshed(tenant_id)


async def get_override(conn: psycopg.AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT tenant_id, module, checksum, updated_by, updated_at FROM policy_overrides "
        "WHERE tenant_id = %s", (tenant_id,))
    return await cur.fetchone()


async def set_override(conn: psycopg.AsyncConnection, tenant_id: str, module: str, by: str
                       ) -> dict[str, Any]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "INSERT INTO policy_overrides (tenant_id, module, checksum, updated_by) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (tenant_id) DO UPDATE SET module = EXCLUDED.module, checksum = EXCLUDED.checksum, "
        "updated_by = EXCLUDED.updated_by, updated_at = now() "
        "RETURNING tenant_id, module, checksum, updated_by, updated_at",
        (tenant_id, module, sha3_512_hex(module.encode()), by))
    row = await cur.fetchone()
    assert row is not None
    return row


async def clear_override(conn: psycopg.AsyncConnection, tenant_id: str) -> bool:
    cur = await conn.execute("DELETE FROM policy_overrides WHERE tenant_id = %s", (tenant_id,))
    return cur.rowcount > 0


def _decision(value: Any) -> Decision:
    if not isinstance(value, dict) or not isinstance(value.get("allow"), bool):
        return Decision(False, ["the policy produced no decision"], error=value is not None)
    reasons = [str(r) for r in value.get("reasons") or []]
    return Decision(value["allow"], reasons)


async def authorize(db: Database, pool: RegoPool, constitution: Active, req: Request) -> Decision:
    """Evaluate the base policy plus the tenant's override, then audit the decision."""
    decision, audited = await decide(db, pool, constitution, req)
    await audited
    return decision


async def decide(db: Database, pool: RegoPool, constitution: Active, req: Request
                 ) -> tuple[Decision, asyncio.Task[dict[str, Any]]]:
    """`authorize` whose audit row is still being written: the decision, and the task writing
    its row. The caller must await the task before anything the decision allowed has an effect
    or a result that leaves the process (see ToolDef.read_only)."""
    override = await current_override(db, req.subject.tenant_id)
    modules = base_modules()
    if override is not None:
        modules["tenant.rego"] = override["module"]
    payload = {
        "subject": req.subject.policy_subject(), "action": req.action, "resource": req.resource,
        "context": req.context, "constitution": {
            "version": constitution.version, "checksum": constitution.checksum,
            "rules": constitution.document["rules"]},
    }
    decision = await _evaluate(pool, modules, payload)
    verdict = "error" if decision.error else ("allow" if decision.allow else "deny")
    return decision, asyncio.ensure_future(audit.record(db, audit.AuditEvent(
        actor=req.subject.actor, tenant_id=req.subject.tenant_id, action=f"policy:{req.action}",
        resource=str(req.resource.get("route") or req.resource.get("tool") or req.action),
        decision=verdict, reasons=decision.reasons, trace_id=req.trace_id, payload=payload)))


def _decisive(payload: dict[str, Any]) -> dict[str, Any]:
    """The input without `context` when no module reads it (it carries per-request ids)."""
    return {k: v for k, v in payload.items() if k != "context"}


async def _evaluate(pool: RegoPool, modules: dict[str, str], payload: dict[str, Any]) -> Decision:
    """The decision for this input, memoised when the policy is pure (see _IMPURE_RE).

    rego-cpp takes 5-20 ms to evaluate; an agent session asks the same question (same subject,
    action, resource, constitution) again and again. The key covers every module's source and
    the whole input (but `context`, which carries per-request ids, unless a module reads it), so
    a new constitution, override or token can never hit a stale entry. Errors are never cached.
    Every decision is still audited by the caller.
    """
    pure = not any(_IMPURE_RE.search(source) for source in modules.values())
    reads_context = any(_CONTEXT_RE.search(source) for source in modules.values())
    cache = _decisions.setdefault(id(pool), OrderedDict())
    decisive = payload if reads_context else _decisive(payload)
    key = hashlib.sha256(json.dumps([modules, decisive], sort_keys=True, default=str).encode()
                         ).hexdigest() if pure else ""
    if pure and key in cache:
        cache.move_to_end(key)
        return cache[key]
    try:
        decision = _decision(await pool.query(modules, payload, DECISION_QUERY))
    except RegoFailure as exc:
        return Decision(False, [f"policy evaluation failed ({exc.kind}): {exc}"[:500]], error=True)
    if pure and not decision.error:
        cache[key] = decision
        while len(cache) > DECISION_CACHE_SIZE:
            cache.popitem(last=False)
    return decision


async def run_tests(pool: RegoPool, extra: dict[str, str]) -> list[TestResult]:
    """Every `test_*` rule of every test package among the shipped and `extra` modules."""
    modules = {**base_modules(include_tests=True), **extra}
    results: list[TestResult] = []
    for source in modules.values():
        names = _TEST_RE.findall(source)
        package = package_of(source)
        if not names or package is None:
            continue
        try:
            value = await pool.query(modules, {}, f"x = data.{package}") or {}
        except RegoFailure as exc:
            results += [TestResult(package, n, False, f"{exc.kind}: {exc}") for n in names]
            continue
        for name in dict.fromkeys(names):
            passed = value.get(name) is True
            results.append(TestResult(package, name, passed, "" if passed else "undefined or false"))
    return results
