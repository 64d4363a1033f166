"""`soma turn` (one turn, for scripts) and `soma chat` (an interactive terminal chat).

Both mint a session token for the persona with your API key (unless `--session` gives one as
`JTI:JWT`), then stream POST /v1/turn: tool calls, their output and the answer appear as they
happen, with the verify verdict and the citations after the answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.markup import escape

from somastack.cli.memory import client
from somastack.cli.output import api_call, console, err, print_json, table
from somastack.client import Client

PersonaOpt = Annotated[str, typer.Option("--persona", "-p", help="persona name or hash")]
ToolOpt = Annotated[list[str] | None, typer.Option(
    "--tool", "-t", help="tool this session may call, repeatable (default: the persona's tools)")]
MemoryOpt = Annotated[str, typer.Option(help="memory access: none | read | readwrite")]
SessionOpt = Annotated[str | None, typer.Option(
    help="reuse a minted session, as JTI:JWT (default: mint one)")]


def _session(c: Client, persona: str, tools: list[str] | None, memory: str, tokens: int,
             session: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    found = api_call(lambda: c.persona(persona))
    if session:
        jti, sep, jwt = session.partition(":")
        if not sep or not jwt:
            raise typer.BadParameter("expected JTI:JWT", param_hint="--session")
        return found, {"jti": jti, "jwt": jwt}
    allowed = found["tools"] if tools is None else tools
    minted = api_call(lambda: c.mint_session(found["hash"], tools=allowed, memory=memory,
                                             tokens=tokens))
    return found, minted


def _guarded(events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The events, with API and connection errors printed the CLI way."""
    it = iter(events)
    while True:
        event = api_call(lambda: next(it, None))
        if event is None:
            return
        yield event


def _show(event: dict[str, Any], state: dict[str, Any]) -> None:
    """Print one event for a person reading along."""
    kind, data = event["type"], event["data"]
    if kind == "recall" and data["ids"]:
        n = len(data["ids"])
        err.print(f"[dim]recalled {n} {'memory' if n == 1 else 'memories'}[/dim]")
    elif kind == "plan" and data["steps"]:
        err.print(f"[dim]plan: {' → '.join(s['tool'] for s in data['steps'])}[/dim]")
    elif kind == "tool.call":
        err.print(f"[cyan]⚙ {data['tool']}[/cyan] {escape(json.dumps(data['arguments']))}")
    elif kind == "tool.delta":
        err.print(f"[dim]{escape(data['text'])}[/dim]", end="")
    elif kind == "tool.done" and data.get("ok"):
        err.print(f"[cyan]✓ {data['tool']}[/cyan] [dim]{data['duration_ms']:.0f} ms[/dim]")
    elif kind == "answer" and "delta" in data:
        if not state.get("answering"):
            console.print("[bold green]agent>[/bold green] ", end="")
            state["answering"] = True
        console.print(escape(data["delta"]), end="", soft_wrap=True)
    elif kind == "answer" and data.get("final"):
        console.print()
        cites = ", ".join(f"{c['kind']}:{c['id'] if c['kind'] == 'tool' else c['id'][:8]}"
                          for c in data["citations"]) or "none"
        err.print(f"[dim]verify: {data['verdict']} · citations: {cites}[/dim]")
    elif kind == "remember" and data["ids"]:
        err.print(f"[dim]remembered {', '.join(i[:8] for i in data['ids'])}[/dim]")
    elif kind == "usage":
        t = data["timings_ms"]
        err.print(f"[dim]{data['tokens']} tokens · {data['tool_calls']} tool calls · "
                  f"{data['cost_cents']}¢ · {t['total']:.0f} ms[/dim]")
    elif kind == "error":
        style = "red" if data.get("fatal") else "yellow"
        err.print(f"[{style}]{data['type']}[/{style}]: {escape(data['detail'])}"
                  + (f" (field {data['field']})" if data.get("field") else ""))


def turn(
    text: Annotated[str, typer.Argument(help="your message")],
    persona: PersonaOpt,
    tool: ToolOpt = None,
    memory: MemoryOpt = "read",
    session: SessionOpt = None,
    tool_choice: Annotated[str, typer.Option(help="auto | required | none")] = "auto",
    max_steps: Annotated[int, typer.Option(min=0, max=8)] = 3,
    tokens: Annotated[int, typer.Option(help="token budget of a minted session")] = 100_000,
    max_tokens: Annotated[int | None, typer.Option(min=1, max=8192,
                                                   help="cap on every model call")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="retry-safe key for this turn")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the whole turn as JSON")] = False,
) -> None:
    """Run one agent turn; prints the answer (or, with --json, every event and the result)."""
    c = client()
    _, sess = _session(c, persona, tool, memory, tokens, session)
    options: dict[str, Any] = {"tool_choice": tool_choice, "max_steps": max_steps,
                               "max_tokens": max_tokens}
    if tool is not None:
        options["allow"] = {"tools": tool}
    events: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    for event in _guarded(c.turn(sess, text, idempotency_key=idempotency_key, **options)):
        events.append(event)
        if not json_out:
            _show(event, state)
    final = next((e["data"] for e in events if e["type"] == "answer" and e["data"].get("final")),
                 None)
    failed = next((e["data"] for e in events if e["type"] == "error" and e["data"]["fatal"]), None)
    if json_out:
        print_json({"turn_id": events[0]["turn_id"] if events else None, "session_id": sess["jti"],
                    "answer": final["text"] if final else None, "error": failed,
                    "usage": events[-1]["data"] if events else None, "events": events})
    if failed is not None:
        raise typer.Exit(1)


def chat(
    persona: PersonaOpt,
    tool: ToolOpt = None,
    memory: MemoryOpt = "readwrite",
    tokens: Annotated[int, typer.Option(help="token budget of the session")] = 200_000,
) -> None:
    """Chat with a persona in the terminal; tool calls and citations show as they stream.

    Type /exit (or Ctrl-D) to leave. The whole chat is one session: earlier turns are context.
    """
    c = client()
    found, sess = _session(c, persona, tool, memory, tokens, None)
    err.print(f"[bold]{found['name']}[/bold] [dim]session {sess['jti']} · tools: "
              f"{', '.join(found['tools'] if tool is None else tool) or 'none'} · memory: {memory}"
              f" · /exit to leave[/dim]")
    while True:
        try:
            text = console.input("[bold blue]you>[/bold blue] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text in ("/exit", "/quit"):
            return
        if not text:
            continue
        state: dict[str, Any] = {}
        try:
            for event in _guarded(c.turn(sess, text)):
                _show(event, state)
        except KeyboardInterrupt:  # stop this answer; the server records a cancelled turn
            console.print("\n[yellow]cancelled[/yellow]")


turns_app = typer.Typer(no_args_is_help=True, help="Stored agent turns: list, show.")


@turns_app.command("list")
def turns_list(
    session: Annotated[str | None, typer.Option(help="only this session's turns (its jti)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    before: Annotated[str | None, typer.Option(help="next_before of the previous page")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Your tenant's turns, newest first, a page at a time."""
    out = api_call(lambda: client().turns(session_id=session, limit=limit, before=before))
    if json_out:
        print_json(out)
        return
    table("turns", ["id", "session", "status", "created", "input", "answer"],
          [[t["id"], t["session_id"], t["status"], str(t["created_at"])[:19],
            t["inputs"]["text"][:40], (t["answer"] or "")[:40]] for t in out["items"]])
    if out["next_before"]:
        console.print(f"more: --before {out['next_before']}")


@turns_app.command("show")
def turns_show(
    turn_id: Annotated[str, typer.Argument(help="a turn id (turn_…)")],
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """One stored turn: its status, answer, usage and every event."""
    out = api_call(lambda: client().get_turn(turn_id))
    if json_out:
        print_json(out)
        return
    console.print(f"[bold]{out['id']}[/bold] {out['status']} · session {out['session_id']}")
    state: dict[str, Any] = {}
    for event in out["events"]:
        _show(event, state)


def register(app: typer.Typer) -> None:
    app.command("turn")(turn)
    app.command("chat")(chat)
    app.add_typer(turns_app, name="turns")
