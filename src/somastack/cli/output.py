"""How CLI commands print: JSON for scripts, Rich tables for people, problems on stderr."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from somastack.client import SomaAPIError

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def table(title: str, columns: list[str], rows: Iterable[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console.print(t)


def api_call(fn: Callable[[], T]) -> T:
    """Run a client call; print a problem clearly and exit 1 on an API or connection error."""
    import httpx

    try:
        return fn()
    except SomaAPIError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from exc
    except httpx.TransportError as exc:
        err.print(f"[red]error[/red] cannot reach the server ({exc}); is `soma serve` running?")
        raise typer.Exit(2) from exc


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """['k=v', 'n=3'] → {'k': 'v', 'n': 3} (values parsed as JSON when they are JSON)."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise typer.BadParameter(f"expected key=value, got {p!r}", param_hint=option)
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out
