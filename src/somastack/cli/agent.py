"""Agent verbs: `soma persona create|list|show` and `soma usage`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from somastack.cli.memory import client
from somastack.cli.output import api_call, console, print_json, table

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
persona_app = typer.Typer(no_args_is_help=True, help="Personas: system prompt, providers, tools, "
                                                     "memory namespace.")
USAGE_COLUMNS = {"tokens": "tokens", "tool_calls": "tool calls", "storage_bytes": "storage B",
                 "egress_bytes": "egress B", "cost_cents": "cost ¢"}


def _show(p: dict[str, Any]) -> None:
    table(f"persona {p['name']}", ["field", "value"],
          [["hash", p["hash"]], ["name", p["name"]], ["providers", ", ".join(p["providers"])],
           ["tools", ", ".join(p["tools"])], ["namespace", p["namespace"]],
           ["created", p["created_at"]], ["system prompt", p["system_prompt"]]])


@persona_app.command("create")
def persona_create(
    name: Annotated[str, typer.Option(help="1-64 of a-z, 0-9, _ -")],
    system_prompt: Annotated[str, typer.Option(help="the persona's instructions")],
    provider: Annotated[list[str] | None, typer.Option(
        "--provider", help="local | openai | anthropic, repeatable, in fallback order")] = None,
    tool: Annotated[list[str] | None, typer.Option("--tool", help="default tool, repeatable")] = None,
    namespace: Annotated[str | None, typer.Option(help="memory namespace (default: default)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Store a persona version; prints its hash (the same document always has the same hash)."""
    out = api_call(lambda: client().create_persona(
        name, system_prompt, providers=provider or None, tools=tool or None, namespace=namespace))
    print_json(out) if json_out else console.print(f"persona {out['name']} {out['hash']}")


@persona_app.command("list")
def persona_list(
    name: Annotated[str | None, typer.Option(help="only the versions of this name")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Persona versions in creation order, a page at a time."""
    out = api_call(lambda: client().personas(name=name, limit=limit, cursor=cursor))
    if json_out:
        print_json(out)
        return
    table("personas (full hash: persona show NAME, or --json)",
          ["name", "hash", "providers", "tools", "namespace", "created"],
          [[p["name"], p["hash"][:12] + "…", ", ".join(p["providers"]), ", ".join(p["tools"]),
            p["namespace"], p["created_at"][:16].replace("T", " ")] for p in out["items"]])
    if out["next_cursor"]:
        console.print(f"more: --cursor {out['next_cursor']}")


@persona_app.command("show")
def persona_show(
    ref: Annotated[str, typer.Argument(help="a persona hash, or a name (its newest version)")],
    json_out: JsonOpt = False,
) -> None:
    """Show one persona."""
    out = api_call(lambda: client().persona(ref))
    print_json(out) if json_out else _show(out)


def usage(
    start: Annotated[str | None, typer.Option("--from", help="ISO time, inclusive")] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO time, exclusive")] = None,
    group_by: Annotated[str | None, typer.Option(
        "--group-by", help="comma-separated: agent, session, minute, hour, day")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Usage (tokens, tool calls, storage, egress, cost in cents) summed per group."""
    groups = [g.strip() for g in (group_by or "").split(",") if g.strip()]
    out = api_call(lambda: client().usage(start, end, groups))
    if json_out:
        print_json(out)
        return
    span = f"{out['from'] or 'beginning'} → {out['to'] or 'now'}"
    keys = [*out["group_by"], *USAGE_COLUMNS]
    table(f"usage  ({span})", [USAGE_COLUMNS.get(k, k) for k in keys],
          [[row[k] for k in keys] for row in out["rows"]])


def register(app: typer.Typer) -> None:
    app.add_typer(persona_app, name="persona")
    app.command("usage")(usage)
