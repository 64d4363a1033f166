"""Rules verbs: `soma constitution|policy|audit|outbox …`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from somastack.cli.governance import JsonOpt, call
from somastack.cli.output import console, err, print_json, table
from somastack.config import get_settings
from somastack.errors import InvalidInput

constitution_app = typer.Typer(no_args_is_help=True, help="The signed constitution.")
policy_app = typer.Typer(no_args_is_help=True, help="Rego policy: your tenant's override, tests.")
audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
outbox_app = typer.Typer(no_args_is_help=True, help="The event outbox and its NATS relay.")
FileArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object")
    return data


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    """A signed envelope as is; a bare document becomes an unsigned envelope."""
    return data if "document" in data else {"document": data, "signatures": []}


@constitution_app.command("keygen")
def constitution_keygen(
    name: Annotated[str, typer.Argument(help="signer name, as listed in the trust file")],
    directory: Annotated[Path | None, typer.Option("--dir", help="default: $SOMA_HOME/signers")] = None,
) -> None:
    """Create an Ed25519 signer key; prints the public key for the trust file."""
    from somastack.governance.constitution import generate_signer

    path, public = generate_signer(directory or get_settings().signer_dir, name)
    console.print(f"private key: {path}\ntrust file entry: \"{name}\": \"{public}\"")


@constitution_app.command("sign")
def constitution_sign(
    file: FileArg,
    key: Annotated[Path, typer.Option("--key", exists=True, dir_okay=False, help="signer key file")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="default: overwrite FILE")] = None,
) -> None:
    """Add your signature to a constitution (a document or an already signed envelope)."""
    from somastack.errors import InvalidInput
    from somastack.governance.constitution import load_signer, sign

    try:
        signed = sign(_envelope(_read_json(file)), *load_signer(key))
    except InvalidInput as exc:
        err.print(f"[red]error[/red] {exc.field}: {exc.detail}")
        raise typer.Exit(1) from exc
    (out or file).write_text(json.dumps(signed, indent=2) + "\n")
    console.print(f"signed by {key.stem}; {len(signed['signatures'])} signature(s); "
                  f"checksum {signed['checksum'][:16]}…")


@constitution_app.command("verify")
def constitution_verify(file: FileArg, json_out: JsonOpt = False) -> None:
    """Check a signed constitution against the server's trusted signers (exit 1 if not valid)."""
    out = call("POST", "/v1/constitution/validate", json=_envelope(_read_json(file)))
    if json_out:
        print_json(out)
    elif out["valid"]:
        console.print(f"valid: signed by {', '.join(out['valid_signers'])} ({out['threshold']} required)")
    else:
        err.print(f"[red]not valid[/red]: {'; '.join(out['problems'])}")
    if not out["valid"]:
        raise typer.Exit(1)


@constitution_app.command("load")
def constitution_load(file: FileArg) -> None:
    """Activate a new version (t signatures, higher version number); audited."""
    out = call("POST", "/v1/constitution", json=_envelope(_read_json(file)))
    console.print(f"constitution v{out['version']} active; checksum {out['checksum'][:16]}…")


@constitution_app.command("show")
def constitution_show(json_out: JsonOpt = False) -> None:
    out = call("GET", "/v1/constitution")
    if json_out:
        print_json(out)
        return
    console.print(f"v{out['version']}  signed by {', '.join(out['signers'])}\n"
                  f"SHA3-512 {out['checksum']}")
    print_json(out["document"])


@policy_app.command("show")
def policy_show(json_out: JsonOpt = False) -> None:
    out = call("GET", "/v1/policy")
    if json_out or not out["override"]:
        print_json(out)
        return
    console.print(f"base: {', '.join(out['base'])}; override by {out['override']['updated_by']}:")
    typer.echo(out["override"]["module"])


@policy_app.command("set")
def policy_set(file: FileArg) -> None:
    """Store your tenant's override module (package soma.tenant; its `deny` set adds denials)."""
    call("PUT", "/v1/policy", json={"module": file.read_text()})
    console.print("policy override stored")


@policy_app.command("clear")
def policy_clear() -> None:
    call("DELETE", "/v1/policy")
    console.print("policy override removed")


@policy_app.command("check")
def policy_check(
    action: str,
    resource: Annotated[str, typer.Option(help="JSON object")] = "{}",
    json_out: JsonOpt = False,
) -> None:
    """Ask the decision point whether you may do ACTION (e.g. memory.write); exit 1 on deny."""
    out = call("POST", "/v1/policy/check", json={"action": action, "resource": json.loads(resource)})
    print_json(out) if json_out else console.print(
        f"{'allow' if out['allow'] else 'deny'}: {'; '.join(out['reasons'])}")
    if not out["allow"]:
        raise typer.Exit(1)


@policy_app.command("test")
def policy_test(files: Annotated[list[Path] | None, typer.Argument(exists=True, dir_okay=False)] = None
                ) -> None:
    """Run the Rego unit tests (rules named test_*) of the shipped policy and of FILES."""
    from somastack.governance.policy import run_tests
    from somastack.governance.rego_worker import RegoPool

    async def run() -> list[Any]:
        pool = RegoPool(1, 30.0)
        try:
            return await run_tests(pool, {f.name: f.read_text() for f in files or []})
        finally:
            pool.close()

    results = asyncio.run(run())
    for r in results:
        mark = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {r.package}.{r.name}{'' if r.passed else '  ' + r.message[:300]}")
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if failed or not results:
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[str | None, typer.Option(
        help="seq:hash, the head an earlier verify printed (kept elsewhere): also fail if that "
             "row is gone or changed, which a chain alone cannot show for its newest rows")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-check the whole chain in the database; names the first broken row (exit 1).

    Prints the head (seq:hash of the last row). Keep it off this machine and pass it back as
    --anchor: then cutting off the newest rows is detected too.
    """
    from dataclasses import asdict

    from somastack.governance.audit import parse_anchor, verify_database
    from somastack.store import resolve_url

    try:
        expected = parse_anchor(anchor) if anchor is not None else None
    except InvalidInput as exc:
        err.print(f"[red]error[/red] --anchor: {exc}")
        raise typer.Exit(2) from exc
    url, _ = resolve_url(get_settings())
    report = verify_database(url, expected)
    if json_out:
        print_json(asdict(report))
    elif report.ok:
        console.print(f"ok: {report.rows} rows, chain intact; head {report.head or '(empty)'}",
                      soft_wrap=True)  # the head is copied whole, never wrapped
    else:
        err.print(f"[red]broken[/red] at row {report.first_bad_seq}: {report.problem}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("list")
def audit_list(
    tenant: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option()] = None,
    decision: Annotated[str | None, typer.Option(help="allow | deny | error | info")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    json_out: JsonOpt = False,
) -> None:
    params = {"tenant": tenant, "action": action, "decision": decision, "limit": limit}
    out = call("GET", "/v1/audit", params={k: v for k, v in params.items() if v is not None})
    if json_out:
        print_json(out)
        return
    table("audit", ["seq", "at", "tenant", "actor", "action", "decision", "reasons"],
          [[r["seq"], r["at"], r["tenant_id"] or "", r["actor"], r["action"], r["decision"],
            "; ".join(r["reasons"])] for r in out["items"]])


@outbox_app.command("status")
def outbox_status(json_out: JsonOpt = False) -> None:
    out = call("GET", "/v1/outbox/status")
    if json_out:
        print_json(out)
        return
    table("outbox", ["", ""], [[k, v] for k, v in out.items()])


@outbox_app.command("replay")
def outbox_replay(
    all_events: Annotated[bool, typer.Option("--all", help="published ones too, not only dead")] = False,
    since: Annotated[str | None, typer.Option(help="ISO time")] = None,
    event_id: Annotated[list[str] | None, typer.Option("--id", help="repeatable")] = None,
) -> None:
    """Queue events again for the relay (consumers skip ids they already applied)."""
    body = {"dead_only": not all_events, "since": since, "ids": event_id}
    out = call("POST", "/v1/outbox/replay", json={k: v for k, v in body.items() if v is not None})
    console.print(f"requeued {out['requeued']} event(s)")


def register(app: typer.Typer) -> None:
    for sub, name in ((constitution_app, "constitution"), (policy_app, "policy"),
                      (audit_app, "audit"), (outbox_app, "outbox")):
        app.add_typer(sub, name=name)
