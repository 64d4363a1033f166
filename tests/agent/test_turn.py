"""POST /v1/turn end to end: the real local model, the real broker and sandbox, the ledger, the
audit log, stored turns, resumption, idempotency, budgets, cancellation and bad input."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from somastack import Client
from somastack.agent.tools import Sandbox
from somastack.agent.turns import Turn, get_turn, open_later
from somastack.config import Settings
from somastack.errors import NotFound
from somastack.store import Database

PROMPT = "You are a helpful assistant. Answer briefly."


def sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Turn events from an SSE body (each `data:` line is one JSON event)."""
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:])


class Agent:
    """A tenant with a persona and a helper to mint sessions and run turns over HTTP."""

    def __init__(self, server: str, key: str, tenant: str) -> None:
        self.server, self.tenant = server, tenant
        self.admin = Client(server, api_key=key)
        self.persona = self.admin.create_persona(
            "helper", PROMPT, tools=["python.eval", "memory.recall"], namespace="agent")

    def session(self, *, tools: list[str] | None = None, memory: str = "readwrite",
                tokens: int = 50_000, **over: Any) -> dict[str, Any]:
        body = {"persona_hash": self.persona["hash"], "policy_hash": "sha3:policy",
                "budgets": {"tokens": tokens, "tools_per_min": 20},
                "allow": {"tools": tools if tools is not None else ["python.eval"],
                          "memory": memory}, "ttl_s": 600, **over}
        return self.admin.request("POST", "/v1/session/mint", json=body)  # type: ignore[no-any-return]

    def post(self, session: dict[str, Any], text: str, headers: dict[str, str] | None = None,
             **body: Any) -> httpx.Response:
        with httpx.Client(base_url=self.server, timeout=120) as http:
            return http.post("/v1/turn", json={"session_id": session["jti"],
                                               "inputs": {"text": text}, **body},
                             headers={"Authorization": f"Bearer {session['jwt']}", **(headers or {})})

    def run_calls(self, session: dict[str, Any], text: str, calls: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
        """A turn whose tool calls the client names (the model only answers)."""
        return self.run(session, text, inputs={"text": text, "tool_calls": calls}, max_tokens=16)

    def run(self, session: dict[str, Any], text: str, headers: dict[str, str] | None = None,
            **body: Any) -> list[dict[str, Any]]:
        resp = self.post(session, text, headers, **body)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/event-stream")
        return list(sse(iter(resp.text.splitlines())))


@pytest.fixture
def agent(server: str, tenant: str, tenant_key: Callable[[str], str | None]) -> Iterator[Agent]:
    key = tenant_key(tenant)
    assert key
    a = Agent(server, key, tenant)
    yield a
    a.admin.close()


def types(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of deltas collapsed (answer deltas → 'answer~')."""
    out: list[str] = []
    for e in events:
        t = "answer~" if e["type"] == "answer" and "delta" in e["data"] else e["type"]
        if t in ("answer~", "tool.delta") and out and out[-1] == t:
            continue
        out.append(t)
    return out


def test_a_real_turn_recalls_calls_a_tool_answers_and_is_recorded(
        agent: Agent, db: psycopg.Connection) -> None:
    fact = agent.admin.remember("The office wifi password is PURPLE-HIPPO-42.", namespace="agent")
    session = agent.session()
    events = agent.run(session, "What is the office wifi password? Compute 6*7 with python.",
                       tool_choice="required", max_steps=1)

    order = types(events)
    assert order[:4] == ["recall", "plan", "tool.call", "tool.delta"] or \
        order[:4] == ["recall", "plan", "tool.call", "tool.done"], json.dumps(events)[:3000]
    assert order[-5:] == ["answer~", "verify", "answer", "remember", "usage"], order
    turn_id = events[0]["turn_id"]
    assert all(e["turn_id"] == turn_id and e["trace_id"] == events[0]["trace_id"] for e in events)
    assert [e["id"] for e in events] == [f"{turn_id}:{i}" for i in range(1, len(events) + 1)]

    by_type = {e["type"]: e["data"] for e in events}
    assert fact["id"] in by_type["recall"]["ids"]  # recalled the memory
    assert by_type["plan"]["steps"] == [{"tool": "python.eval"}]
    call, done = by_type["tool.call"], by_type["tool.done"]
    assert call["tool"] == "python.eval" and isinstance(call["arguments"]["code"], str)
    assert done["call_id"] == call["call_id"] and done["ok"] is True
    assert set(done["result"]) == {"exit_code", "stdout", "stderr"}
    final = events[-3]["data"]
    assert final["final"] is True and final["text"]
    deltas = "".join(e["data"]["delta"] for e in events if e["type"] == "answer"
                     and "delta" in e["data"])
    assert deltas.strip() == final["text"]
    assert by_type["verify"]["verdict"] in ("supported", "partial", "unsupported")
    assert by_type["verify"]["tools"] == [{"call_id": call["call_id"], "tool": "python.eval",
                                           "ok": True}]
    (remembered,) = by_type["remember"]["ids"]
    usage = by_type["usage"]
    assert usage["tokens"] > 0 and usage["tool_calls"] == 1

    # the stored turn replays exactly what was streamed
    stored = agent.admin.request("GET", f"/v1/turns/{turn_id}")
    assert stored["status"] == "done" and stored["answer"] == final["text"]
    assert stored["events"] == events
    memory = agent.admin.get(remembered)
    assert memory["key"] == f"turn:{turn_id}" and final["text"] in memory["content"]

    # the ledger: this session's rows add up to what the turn reported, nothing left reserved
    row = db.execute("SELECT sum(tokens), sum(tool_calls), sum(storage_bytes) FROM usage_ledger "
                     "WHERE tenant_id = %s AND session = %s",
                     (agent.tenant, session["jti"])).fetchone()
    assert row == (usage["tokens"], 1, usage["storage_bytes"])
    held = db.execute("SELECT count(*) FROM budget_reservations WHERE tenant_id = %s",
                      (agent.tenant,)).fetchone()
    assert held == (0,)
    spent = db.execute("SELECT spent_tokens, reserved_tokens FROM budgets WHERE tenant_id = %s "
                       "AND scope = %s", (agent.tenant, f"session:{session['jti']}")).fetchone()
    assert spent == (usage["tokens"], 0)

    # the audit log: the policy decision on the tool call and the turn itself, on one trace
    audit = db.execute("SELECT action, decision, resource FROM audit_log WHERE tenant_id = %s "
                       "AND trace_id = %s ORDER BY seq",
                       (agent.tenant, events[0]["trace_id"])).fetchall()
    assert ("policy:tool.call", "allow", "python.eval") in audit
    assert audit[-1] == ("turn.run", "allow", f"turn:{turn_id}")


def test_idempotency_key_never_runs_twice_and_last_event_id_resumes(
        agent: Agent, db: psycopg.Connection) -> None:
    session = agent.session(tools=[], memory="read")
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = agent.run(session, "Say hello.", key)
    again = agent.run(session, "Say hello.", key)
    assert again == first
    n = db.execute("SELECT count(*) FROM turns WHERE tenant_id = %s", (agent.tenant,)).fetchone()
    assert n == (1,)
    resp = agent.post(session, "Something else.", key)
    assert resp.status_code == 409 and resp.json()["field"] == "Idempotency-Key"

    resumed = agent.run(session, "ignored", {"Last-Event-ID": first[2]["id"]})
    assert resumed == first[3:]
    with httpx.Client(base_url=agent.server, timeout=60) as http:
        resp = http.get(f"/v1/turns/{first[0]['turn_id']}/events",
                        headers={"Authorization": f"Bearer {session['jwt']}",
                                 "Last-Event-ID": first[-2]["id"]})
    assert list(sse(iter(resp.text.splitlines()))) == first[-1:]


def test_budget_exhausted_stops_the_turn_cleanly(agent: Agent, db: psycopg.Connection) -> None:
    session = agent.session(tools=[], memory="read", tokens=40)
    events = agent.run(session, "Write a long story about the sea.")
    assert [e["type"] for e in events][-2:] == ["error", "usage"]
    assert events[-2]["data"]["type"] == "budget_exhausted" and events[-2]["data"]["fatal"]
    turn = agent.admin.request("GET", f"/v1/turns/{events[0]['turn_id']}")
    assert turn["status"] == "error" and turn["error"]["type"] == "budget_exhausted"
    spent = db.execute("SELECT spent_tokens, reserved_tokens FROM budgets WHERE tenant_id = %s "
                       "AND scope = %s", (agent.tenant, f"session:{session['jti']}")).fetchone()
    assert spent is not None and spent[0] <= 40 and spent[1] == 0  # never over-spent


def hang_up(agent: Agent, session: dict[str, Any], text: str, after_deltas: int) -> dict[str, Any]:
    """Start a turn, close the connection after `after_deltas` answer deltas; the stored turn."""
    with httpx.Client(base_url=agent.server, timeout=60) as http, http.stream(
            "POST", "/v1/turn", json={"session_id": session["jti"], "inputs": {"text": text}},
            headers={"Authorization": f"Bearer {session['jwt']}"}) as resp:
        turn_id = resp.headers["x-turn-id"]
        deltas = 0
        for line in resp.iter_lines():
            deltas += line.startswith("event: answer")
            if deltas == after_deltas:
                break
    deadline = time.monotonic() + 30
    while (turn := agent.admin.request("GET", f"/v1/turns/{turn_id}"))["status"] == "running":
        assert time.monotonic() < deadline, "the turn kept running after the client left"
        time.sleep(0.1)
    return turn  # type: ignore[no-any-return]


def test_client_disconnect_cancels_and_records_a_partial_turn(agent: Agent) -> None:
    session = agent.session(tools=[], memory="read")
    turn = hang_up(agent, session, "Tell a very long story about a fox.", after_deltas=1)
    assert turn["status"] == "cancelled"
    kinds = [e["type"] for e in turn["events"]]
    assert kinds[:2] == ["recall", "plan"] and kinds[-2:] == ["error", "usage"]
    assert turn["events"][-2]["data"]["type"] == "cancelled"
    usage = turn["events"][-1]["data"]
    assert usage["tokens"] > 0  # the abandoned stream is charged, and reported as charged


def test_a_cancelled_turn_reports_what_the_ledger_charged(agent: Agent, db: psycopg.Connection
                                                          ) -> None:
    session = agent.session(tools=[], memory="read")
    turn = hang_up(agent, session, "Tell a very long story about a cat.", after_deltas=5)
    assert turn["status"] == "cancelled"
    _ledger_consistent(db, agent.tenant, session["jti"], turn["events"][-1]["data"])


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"session_id": "not-my-session"}, 404, "session_id"),
    ({"allow": {"tools": ["http.fetch"]}}, 403, "allow.tools[0]"),
    ({"allow": {"tools": ["no.such_tool"]}}, 422, "allow.tools[0]"),
    ({"allow": {"memory": "readwrite"}}, 403, "allow.memory"),
    ({"max_steps": 99}, 422, "max_steps"),
    ({"inputs": {"text": ""}}, 422, "inputs.text"),
    ({"surprise": 1}, 422, "surprise"),
])
def test_bad_turn_requests_are_4xx_naming_the_field(
        agent: Agent, db: psycopg.Connection, change: dict[str, Any], status: int, field: str
) -> None:
    session = agent.session(tools=["python.eval"], memory="read")
    body = {"session_id": session["jti"], "inputs": {"text": "hi"}, **change}
    with httpx.Client(base_url=agent.server, timeout=60) as http:
        resp = http.post("/v1/turn", json=body,
                         headers={"Authorization": f"Bearer {session['jwt']}"})
    assert resp.status_code == status, resp.text
    assert resp.json()["field"] == field
    n = db.execute("SELECT count(*) FROM turns WHERE tenant_id = %s", (agent.tenant,)).fetchone()
    assert n == (0,)


def test_turns_need_a_session_token_and_stay_in_their_tenant(
        agent: Agent, server: str, tenant_key: Callable[[str], str | None]) -> None:
    session = agent.session(tools=[], memory="read")
    with httpx.Client(base_url=server, timeout=60) as http:  # an API key is not a session
        resp = http.post("/v1/turn", json={"session_id": session["jti"], "inputs": {"text": "hi"}},
                         headers={"Authorization": f"Bearer {agent.admin.http.headers['authorization'][7:]}"})
        assert resp.status_code == 403 and resp.json()["field"] == "Authorization"
        resp = http.post("/v1/turn", json={"session_id": session["jti"], "inputs": {"text": "hi"}},
                         headers={"Authorization": "Bearer expired.or.forged"})
        assert resp.status_code == 401
    turn_id = agent.run(session, "Say hi.")[0]["turn_id"]
    other = tenant_key(f"t-{uuid.uuid4().hex[:12]}")
    with Client(server, api_key=other) as intruder:
        resp = intruder.http.get(f"/v1/turns/{turn_id}")
        assert resp.status_code == 404
        assert intruder.request("GET", "/v1/turns")["items"] == []


def _audit(db: psycopg.Connection, tenant: str, trace: str) -> list[tuple[str, str, str]]:
    return db.execute("SELECT action, decision, resource FROM audit_log WHERE tenant_id = %s "
                      "AND trace_id = %s ORDER BY seq", (tenant, trace)).fetchall()


def _ledger_consistent(db: psycopg.Connection, tenant: str, session: str, usage: dict) -> None:
    row = db.execute("SELECT coalesce(sum(tokens), 0), coalesce(sum(tool_calls), 0) "
                     "FROM usage_ledger WHERE tenant_id = %s AND session = %s",
                     (tenant, session)).fetchone()
    assert row == (usage["tokens"], usage["tool_calls"])
    held = db.execute("SELECT count(*) FROM budget_reservations WHERE tenant_id = %s",
                      (tenant,)).fetchone()
    assert held == (0,)


BAD_TOOLS = [
    # (code, error type, what the tool.done / error says)
    ("while True:\n    pass\n", ("tool-timeout", "tool-failed"), "soma-turn-hang"),
    ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", ("tool-output-too-large",),
     "soma-turn-flood"),
]


@pytest.mark.parametrize(("code", "errors", "marker"), BAD_TOOLS, ids=["hangs", "1GB-output"])
def test_a_bad_tool_ends_in_an_error_event_audited_no_leak_ledger_consistent(
        agent: Agent, db: psycopg.Connection, live_processes: Callable[[str], list[int]],
        code: str, errors: tuple[str, ...], marker: str) -> None:
    session = agent.session(tools=["python.eval"], memory="read")
    call = {"tool": "python.eval", "arguments": {"code": f"# {marker}\n{code}"}}
    events = agent.run_calls(session, "Run my program.", [call])
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["recall", "plan", "tool.call"] and kinds[-1] == "usage"
    error = next(e["data"] for e in events if e["type"] == "error")
    assert error["type"] in errors and error["fatal"] is False and error["call_id"]
    done = next(e["data"] for e in events if e["type"] == "tool.done")
    assert done["ok"] is False
    assert ("tool.call", "error", "python.eval") in _audit(db, agent.tenant, events[0]["trace_id"])
    assert live_processes(marker) == []
    _ledger_consistent(db, agent.tenant, session["jti"], events[-1]["data"])
    assert events[-1]["data"]["tool_calls"] == 1  # it ran, so it is charged


def test_network_is_closed_to_sandboxed_tools(agent: Agent, db: psycopg.Connection,
                                              settings: Settings) -> None:
    session = agent.session(tools=["python.eval"], memory="read")
    port = int(agent.server.rsplit(":", 1)[1])  # this very API server listens on loopback
    code = ("import socket\ns = socket.socket()\ns.settimeout(3)\n"
            f"s.connect(('127.0.0.1', {port}))\nprint('connected')\n")
    events = agent.run_calls(session, "Go online.",
                             [{"tool": "python.eval", "arguments": {"code": code}}])
    done = next(e["data"] for e in events if e["type"] == "tool.done")
    if Sandbox(settings).isolation != "namespace":  # the documented fallback: network open
        assert done["ok"] is True and "connected" in done["result"]["stdout"]
        return
    assert done["ok"] is True and done["result"]["exit_code"] != 0
    assert "connected" not in done["result"]["stdout"]
    assert "OSError" in done["result"]["stderr"] or "Error" in done["result"]["stderr"]
    _ledger_consistent(db, agent.tenant, session["jti"], events[-1]["data"])


def test_arguments_failing_the_schema_are_refused_and_audited(
        agent: Agent, db: psycopg.Connection) -> None:
    session = agent.session(tools=["python.eval"], memory="read")
    events = agent.run_calls(session, "Run it.",
                             [{"tool": "python.eval", "arguments": {"code": 42}}])
    error = next(e["data"] for e in events if e["type"] == "error")
    assert error["type"] == "invalid-input" and error["field"] == "arguments.code"
    assert ("tool.call", "deny", "python.eval") in _audit(db, agent.tenant, events[0]["trace_id"])
    assert events[-1]["data"]["tool_calls"] == 0  # refused before it ran: nothing charged
    _ledger_consistent(db, agent.tenant, session["jti"], events[-1]["data"])


def test_a_tool_call_outside_the_turn_is_403_and_audited(agent: Agent, db: psycopg.Connection
                                                         ) -> None:
    session = agent.session(tools=["python.eval"], memory="read")
    resp = agent.post(session, "x", inputs={"text": "x", "tool_calls": [
        {"tool": "memory.recall", "arguments": {"query": "x"}}]})
    assert resp.status_code == 403 and resp.json()["field"] == "inputs.tool_calls[0].tool"
    denied = db.execute("SELECT count(*) FROM audit_log WHERE tenant_id = %s AND "
                        "action = 'turn.run' AND decision = 'deny'", (agent.tenant,)).fetchone()
    assert denied == (1,)


def test_model_output_cut_short_is_a_clear_non_fatal_error(agent: Agent,
                                                           db: psycopg.Connection) -> None:
    session = agent.session(tools=["python.eval"], memory="read")
    events = agent.run(session, "Compute 2+2 with python.", tool_choice="required", max_tokens=4)
    error = next(e["data"] for e in events if e["type"] == "error")
    assert error["type"] == "model-output-invalid" and error["stage"] == "plan"
    assert error["field"] == "max_tokens" and error["fatal"] is False
    assert events[-1]["type"] == "usage" and events[-1]["data"]["tokens"] > 0  # charged
    _ledger_consistent(db, agent.tenant, session["jti"], events[-1]["data"])


def test_an_expired_session_token_is_401(agent: Agent) -> None:
    session = agent.session(tools=[], memory="read", ttl_s=1)
    time.sleep(2.1)
    resp = agent.post(session, "hi")
    assert resp.status_code == 401 and "expired" in resp.json()["detail"]


def test_session_tools_per_min_gates_tool_calls(agent: Agent, db: psycopg.Connection) -> None:
    body = {"persona_hash": agent.persona["hash"], "policy_hash": "sha3:policy", "ttl_s": 600,
            "budgets": {"tokens": 50_000, "tools_per_min": 1},
            "allow": {"tools": ["python.eval"], "memory": "read"}}
    session = agent.admin.request("POST", "/v1/session/mint", json=body)
    call = {"tool": "python.eval", "arguments": {"code": "print(1)"}}
    events = agent.run_calls(session, "Twice.", [call, call])
    done = [e["data"] for e in events if e["type"] == "tool.done"]
    assert [d["ok"] for d in done] == [True, False]
    error = next(e["data"] for e in events if e["type"] == "error")
    assert error["type"] == "rate-limited" and error["field"] == "budgets.tools_per_min"
    _ledger_consistent(db, agent.tenant, session["jti"], events[-1]["data"])



@pytest.mark.asyncio
async def test_a_turn_whose_row_is_not_written_yet_is_read_when_it_is(
        database: Database, tenant: str) -> None:
    """Without an Idempotency-Key a turn's row is written with its first events, after its
    stream (and id) went out: a read in that window waits for the row instead of a 404."""
    turn = Turn(tenant=tenant, id=f"turn_{uuid.uuid4().hex[:20]}", session_id="s1",
                persona_hash="sha3:p", status="running", inputs={"text": "hi"}, trace_id="tr",
                request_hash="h")
    write = open_later(database, turn)
    reading = asyncio.ensure_future(get_turn(database, tenant, turn.id))
    await asyncio.sleep(0.3)
    assert not reading.done()  # waiting, not 404
    await write
    assert (await reading).id == turn.id
    with pytest.raises(NotFound):  # a turn nobody started is still a 404, at once
        await asyncio.wait_for(get_turn(database, tenant, "turn_unknown"), 2)
