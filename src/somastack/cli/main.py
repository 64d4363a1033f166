"""`soma`: the command line. Every API capability has a verb here."""

from __future__ import annotations

import asyncio
import atexit
import signal
import socket
import sys
from typing import Annotated, Any

import psycopg
import typer

from somastack import __version__
from somastack.cli import agent, bench, brain, chat, governance, governance_rules, memory
from somastack.cli.output import console, err, print_json, table
from somastack.config import get_settings
from somastack.errors import ConstitutionInvalid, StoreUnavailable
from somastack.store import embedded, migrate, resolve_url

app = typer.Typer(
    name="soma", no_args_is_help=True, add_completion=False,
    help="SomaStack: long-term memory and a governed runtime for AI agents.\n\n"
         "Configure with SOMA_* environment variables (see `soma config show`).",
)
db_app = typer.Typer(no_args_is_help=True, help="Database: migrations and status.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration.")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(bench.app, name="bench")
app.add_typer(brain.app, name="brain")
memory.register(app)
governance.register(app)
governance_rules.register(app)
agent.register(app)
chat.register(app)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (SOMA_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (SOMA_PORT)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="worker processes (SOMA_WORKERS)")] = None,
) -> None:
    """Start the API server (embedded PostgreSQL unless SOMA_DATABASE_URL is set)."""
    import uvicorn

    from somastack.api.app import create_app
    from somastack.governance.runtime import preflight

    s = get_settings()
    s.host, s.port = host or s.host, port or s.port
    with socket.socket() as probe:
        if probe.connect_ex((s.host, s.port)) == 0:
            err.print(f"[red]error[/red] {s.host}:{s.port} is already in use (another `soma serve`?)")
            raise typer.Exit(1)
    where = "embedded PostgreSQL in " + str(s.home_dir) if not s.database_url else "SOMA_DATABASE_URL"
    try:  # fail closed before binding: a bad constitution means no server at all
        active = asyncio.run(preflight(s))
    except (ConstitutionInvalid, StoreUnavailable) as exc:
        err.print(f"[red]error[/red] refusing to start: {exc.detail}")
        raise typer.Exit(1) from exc
    console.print(f"constitution v{active.version} verified (SHA3-512 {active.checksum[:16]}…)")
    console.print(f"SomaStack {__version__} on http://{s.host}:{s.port}  (database: {where})")
    # uvicorn re-raises SIGTERM after its graceful shutdown; exit normally instead, so that the
    # atexit hook releasing (and, if last, stopping) the embedded PostgreSQL runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    n = workers or s.workers
    if n == 1:
        uvicorn.run(create_app(s), host=s.host, port=s.port, log_level="info", access_log=False)
        return
    if not s.database_url:  # workers killed by the supervisor leave their handles behind
        atexit.register(embedded.release_dead_handles, s.home_dir)
    uvicorn.run("somastack.api.app:create_app", factory=True, workers=n, host=s.host, port=s.port,
                log_level="info", access_log=False)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations."""
    url, _ = resolve_url(get_settings())
    done = migrate.migrate(url)
    console.print(f"applied: {', '.join(done)}" if done else "up to date")


@db_app.command("status")
def db_status(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Server, PostgreSQL and pgvector versions, and the migrations applied."""
    s = get_settings()
    url, embedded = resolve_url(s)
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        vec = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        have = migrate.applied(conn)
    info: dict[str, Any] = {
        "server": f"embedded ({s.home_dir})" if embedded else "external (SOMA_DATABASE_URL)",
        "postgresql": version[0] if version else None,
        "pgvector": vec[0] if vec else None,
        "applied": have,
        "pending": [m.version for m in migrate.available() if m.version not in have],
    }
    if json_out:
        print_json(info)
        return
    table("database", ["", ""], [[k, v] for k, v in info.items() if k not in ("applied", "pending")])
    table("migrations", ["version", "applied at"],
          [[v, at] for v, at in have.items()] + [[v, "pending"] for v in info["pending"]])


@config_app.command("show")
def config_show(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The effective settings (secrets masked)."""
    data = get_settings().model_dump(mode="json")
    for secret in ("embed_api_key", "database_url", "api_key"):
        if data.get(secret):
            data[secret] = "***"
    if json_out:
        print_json(data)
        return
    table("settings (env SOMA_<NAME>)", ["name", "value"], [[k, v] for k, v in data.items()])


if __name__ == "__main__":
    app()
