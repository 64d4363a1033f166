"""`soma bench …`: benchmarks that print JSON figures measured on this machine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from somastack.cli.output import err, print_json

app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON output).")


@contextmanager
def _bars(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, disable=not enabled) as bar:
        def task(label: str, total: int) -> Callable[[int], None]:
            t = bar.add_task(label, total=total)
            return lambda n: bar.advance(t, n)

        yield task


@app.command()
def scale(
    memories: Annotated[int, typer.Option(min=1, help="memories to ingest")] = 10_000,
    queries: Annotated[int, typer.Option(min=1, help="recall queries to fire")] = 500,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="concurrent clients")] = 8,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100)] = 10,
    home: Annotated[Path | None, typer.Option(help="SOMA_HOME for the bench server (default: temp)")] = None,
    reuse: Annotated[bool, typer.Option(
        "--reuse", help="recall only, on the memories an earlier run left in --home "
                        "(--memories is then ignored)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON only: no progress bars")] = False,
) -> None:
    """Ingest N memories and fire Q recalls over HTTP against a fresh embedded server.

    To measure recall again on the same memories (another build or setting), keep them with --home DIR:

    soma bench scale --home DIR --reuse --queries 2000 --json"""
    from somastack.bench import scale as bench_scale

    try:
        with _bars(enabled=not json_out) as bars:
            result = bench_scale.run(memories, queries, concurrency, top_k=top_k, home=home,
                                     reuse=reuse, progress=bars)
    except bench_scale.HomeError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from exc
    print_json(result)


@app.command()
def locomo(
    data: Annotated[Path, typer.Option(help="directory of LoCoMo-format conversation files")],
    baselines: Annotated[bool, typer.Option("--baselines", help="add dense, bm25, rrf")] = False,
    ablate: Annotated[list[str] | None, typer.Option(help="feature to switch off; repeatable")] = None,
    home: Annotated[Path | None, typer.Option(help="SOMA_HOME for the bench server (default: temp)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON only: no progress bars")] = False,
) -> None:
    """Recall@k on conversation memory (LoCoMo format), with baselines and ablations."""
    from somastack.bench import locomo as bench_locomo

    try:
        with _bars(enabled=not json_out) as bars:
            result = bench_locomo.run(data, with_baselines=baselines, ablate=ablate or [], home=home,
                                      progress=bars)
    except ValueError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from exc
    print_json(result)


@app.command()
def turn(
    turns: Annotated[int, typer.Option(min=1, help="turns per shape (client_tools, model_plan)")] = 30,
    home: Annotated[Path | None, typer.Option(help="SOMA_HOME for the bench server (default: temp)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON only: no progress bars")] = False,
) -> None:
    """Agent turn overhead beyond model and tool time (p50/p95 ms) and SSE events/s."""
    from somastack.bench import turn as bench_turn

    with _bars(enabled=not json_out) as bars:
        result = bench_turn.run(turns, home=home, progress=bars)
    print_json(result)
