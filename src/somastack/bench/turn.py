"""`soma bench turn`: what the agent runtime adds to a turn beyond the model, and SSE throughput.

A fresh `soma serve` (embedded PostgreSQL, the local model) gets a tenant, a persona, a few
memories and a session; then turns run one after another, in two shapes:
- `client_tools`: the client names one `memory.recall` call (no plan or argument model calls);
- `model_plan`: the model plans (tool_choice required) and writes the call's arguments.
Each turn: recall → plan → tool → answer (streamed) → verify → remember → usage.

Overhead per turn = the client's wall time from sending the request to receiving the `usage`
event, minus the model time (the LLM provider's own time, and the embedding model's time on the
critical path: the recall query, the remembered exchange) and the tool execution time the server
reports in that event. So it holds HTTP, auth, session checks, the recall and memory-write SQL,
the ledger hold, policy decisions and their audit, event storage, SSE and verification.
`overhead_to_end_ms` measures to the end of the stream instead, which also holds closing the
turn (the last usage written to the ledger, the events stored, the turn's status and audit row).
`overhead_with_embedding_ms` counts the embedding time as overhead too. `events_per_s` is SSE
delivery of stored turns (GET /v1/turns/{id}/events); `live_events_per_s` counts the live
streams' events over their wall time (dominated by the model).
The turns go over one keep-alive connection of bench/wire.py's lean HTTP/1.1 client, as in
`soma bench scale`: the client's own parsing time is in the figures, and httpx's would be several
times that.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from somastack.bench import wire
from somastack.bench.server import served
from somastack.bench.stats import machine, percentiles_ms
from somastack.client import Client, turn_events

FACTS = [
    "Ana's favourite colour is teal.", "The staging database runs on port 5433.",
    "Our team stand-up is at 9:30 every weekday.", "Ben is allergic to peanuts.",
    "The quarterly report is due on the 15th.", "The VPN gateway is vpn.example.internal.",
    "Chloe prefers tea over coffee.", "The build server has 16 cores.",
]
QUESTIONS = [
    "What is Ana's favourite colour?", "Which port does the staging database use?",
    "When is the team stand-up?", "What is Ben allergic to?", "When is the quarterly report due?",
    "What is the VPN gateway?", "Does Chloe prefer tea or coffee?", "How many cores has the build server?",
]
Progress = Callable[[str, int], Callable[[int], None]]


async def _one(conn: wire.Connection, session: dict[str, Any], body: dict[str, Any]
               ) -> tuple[float, float, list[dict[str, Any]]]:
    """(seconds to the usage event, seconds to the end of the stream, the events)."""
    started = time.perf_counter()
    events: list[dict[str, Any]] = []
    wall = 0.0
    async for event in conn.stream("/v1/turn", {"session_id": session["jti"], **body}):
        events.append(event)
        if event["type"] == "usage":
            wall = time.perf_counter() - started
    end = time.perf_counter() - started
    if not events or events[-1]["type"] != "usage":
        raise RuntimeError(f"turn ended without usage: {json.dumps(events[-2:])[:500]}")
    fatal = [e["data"] for e in events if e["type"] == "error" and e["data"]["fatal"]]
    if fatal:
        raise RuntimeError(f"turn failed: {fatal}")
    return wall, end, events


Run = Callable[[int], tuple[float, float, list[dict[str, Any]]]]


def _shape(name: str, turns: int, run: Run, advance: Callable[[int], None]
           ) -> tuple[dict[str, Any], list[str], int]:
    overhead, to_end, llm_only, wall, model, tools, server = [], [], [], [], [], [], []
    ids, events_seen, step_errors = [], 0, 0
    stages: dict[str, list[float]] = {}
    for i in range(turns):
        took, end, events = run(i)
        t = events[-1]["data"]["timings_ms"]
        wall.append(took)
        model.append(t["model"] / 1000)
        tools.append(t["tools"] / 1000)
        server.append(t["overhead"] / 1000)
        overhead.append(took - (t["model"] + t["embed"] + t["tools"]) / 1000)
        to_end.append(end - (t["model"] + t["embed"] + t["tools"]) / 1000)
        llm_only.append(took - (t["model"] + t["tools"]) / 1000)
        for stage, st in events[-1]["data"]["stages_ms"].items():
            stages.setdefault(stage, []).append(
                st["wall"] - st["model"] - st["embed"] - st["tools"])
        ids.append(events[0]["turn_id"])
        events_seen += len(events)
        step_errors += sum(1 for e in events if e["type"] == "error")
        advance(1)
    live = events_seen / sum(wall)
    return {"turns": turns, "overhead_ms": percentiles_ms(overhead),
            "overhead_to_end_ms": percentiles_ms(to_end),
            "overhead_with_embedding_ms": percentiles_ms(llm_only),
            "server_overhead_ms": percentiles_ms(server), "wall_ms": percentiles_ms(wall),
            "model_ms": percentiles_ms(model), "tool_ms": percentiles_ms(tools),
            "events_per_turn": round(events_seen / turns, 1), "step_errors": step_errors,
            "live_events_per_s": round(live, 1),
            "stage_overhead_ms": {k: round(sum(v) / len(v), 2) for k, v in stages.items()},
            }, ids, events_seen


def run(turns: int = 30, *, home: Path | None = None, progress: Progress | None = None
        ) -> dict[str, Any]:
    bar = progress or (lambda label, total: (lambda n: None))
    probe = machine()  # before the server starts: the host idle
    with tempfile.TemporaryDirectory(prefix="soma-bench-turn-") as tmp:
        base = home or Path(tmp)
        loop = asyncio.new_event_loop()
        with served(base) as srv, httpx.Client(base_url=srv.url, timeout=300) as http:
            admin = Client(srv.url, api_key=(base / "admin.key").read_text().strip())
            tenant = f"bench-{uuid.uuid4().hex[:8]}"
            admin.request("POST", "/v1/tenants", json={"id": tenant})
            key = admin.request("POST", f"/v1/tenants/{tenant}/keys",
                                json={"name": "bench", "scopes": ["admin"]})["key"]
            c = Client(srv.url, api_key=key)
            persona = c.create_persona("bench", "Answer in one short sentence.",
                                       tools=["memory.recall"], namespace="bench")
            c.remember_batch([{"content": f} for f in FACTS], namespace="bench")
            session = c.mint_session(persona["hash"], tools=["memory.recall"],
                                     memory="readwrite", tokens=1_000_000, tools_per_min=600)
            conn = loop.run_until_complete(wire.Connection.open(
                srv.url, {"Authorization": f"Bearer {session['jwt']}"}))

            def client_tools(i: int) -> tuple[float, float, list[dict[str, Any]]]:
                q = QUESTIONS[i % len(QUESTIONS)]
                return loop.run_until_complete(_one(conn, session, {"inputs": {"text": q, "tool_calls": [
                    {"tool": "memory.recall", "arguments": {"query": q, "top_k": 3}}]},
                    "max_tokens": 24}))

            def model_plan(i: int) -> tuple[float, float, list[dict[str, Any]]]:
                return loop.run_until_complete(_one(conn, session, {
                    "inputs": {"text": QUESTIONS[i % len(QUESTIONS)]}, "tool_choice": "required",
                    "max_steps": 1, "max_tokens": 96}))

            for i in range(3):  # warm up: model, pools, policy workers
                client_tools(i)
                model_plan(i)
            out: dict[str, Any] = {"turns": turns}
            all_ids: list[str] = []
            for name, fn in (("client_tools", client_tools), ("model_plan", model_plan)):
                out[name], ids, _ = _shape(name, turns, fn, bar(f"turns ({name})", turns))
                all_ids += ids
            for key in ("overhead_ms", "overhead_to_end_ms",
                        "overhead_with_embedding_ms"):  # the worse shape's
                out[key] = {p: max(out[n][key][p] for n in ("client_tools", "model_plan"))
                            for p in ("p50", "p95")}
            replayed, started = 0, time.perf_counter()
            auth = {"Authorization": f"Bearer {session['jwt']}"}
            for turn_id in all_ids:
                with http.stream("GET", f"/v1/turns/{turn_id}/events", headers=auth) as resp:
                    replayed += sum(1 for _ in turn_events(resp.iter_lines()))
            out["events_per_s"] = round(replayed / (time.perf_counter() - started), 1)
            out["replayed_events"] = replayed
            out["target"] = {"overhead_p95_ms": 25.0,
                             "met": out["overhead_ms"]["p95"] <= 25.0}
            out["machine"] = probe
            loop.run_until_complete(conn.close())
            loop.close()
            c.close()
            admin.close()
    return out
