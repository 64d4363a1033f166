"""Identity verbs: `soma admin|tenant|key|keys|token …` (each maps to one API call, except
`admin init`, which works on the database directly to bootstrap or recover a deployment)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from somastack.cli.output import api_call, console, print_json, table
from somastack.client import Client
from somastack.config import get_settings

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
admin_app = typer.Typer(no_args_is_help=True, help="Bootstrap and recovery (direct database access).")
tenant_app = typer.Typer(no_args_is_help=True, help="Tenants (platform admin).")
key_app = typer.Typer(no_args_is_help=True, help="API keys of your tenant (tenant admin).")
keys_app = typer.Typer(no_args_is_help=True, help="Session-token signing keys: list, rotate.")
token_app = typer.Typer(no_args_is_help=True, help="Session tokens: mint, revoke.")


def api() -> Client:
    """A client with SOMA_API_KEY (or the local bootstrap admin key)."""
    s = get_settings()
    return Client(s.server_url, api_key=s.credential)


def call(method: str, path: str, **kw: Any) -> Any:
    return api_call(lambda: api().request(method, path, **kw))


@admin_app.command("init")
def admin_init(
    new_key: Annotated[bool, typer.Option("--new-key", help="also create another platform admin key")]
    = False,
) -> None:
    """Migrate and bootstrap the database (constitution, signing key, first admin key)."""
    from somastack.governance.bootstrap import bootstrap, create_admin_key
    from somastack.store import Database

    async def run() -> str | None:
        db = await Database.open(get_settings())
        try:
            await bootstrap(db, get_settings(), announce=lambda m: console.print(m))
            if not new_key:
                return None
            async with db.system() as conn:
                return await create_admin_key(conn, "system:cli")
        finally:
            await db.close()

    key = asyncio.run(run())
    if key:
        console.print(f"new platform admin key (shown once):\n  {key}")
    console.print("initialised")


def _limits(value: str | None) -> dict[str, Any]:
    try:
        parsed = json.loads(value) if value else {}
    except ValueError as exc:
        raise typer.BadParameter("must be a JSON object", param_hint="--limits") from exc
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--limits")
    return parsed


@tenant_app.command("create")
def tenant_create(
    tenant_id: Annotated[str, typer.Argument(help="1-64 of letters, digits, _ . -")],
    name: Annotated[str | None, typer.Option()] = None,
    plan: Annotated[str, typer.Option()] = "free",
    limits: Annotated[str | None, typer.Option(help='JSON, e.g. {"rate": {"limit": 100}}')] = None,
    residency: Annotated[str | None, typer.Option()] = None,
    key: Annotated[bool, typer.Option("--key/--no-key", help="also create an admin key")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Create a tenant and (by default) its first admin key, shown once."""
    body = {"id": tenant_id, "name": name, "plan": plan, "limits": _limits(limits),
            "residency": residency}
    out: dict[str, Any] = {"tenant": call("POST", "/v1/tenants",
                                          json={k: v for k, v in body.items() if v is not None})}
    if key:
        out["key"] = call("POST", f"/v1/tenants/{tenant_id}/keys",
                          json={"name": "admin", "scopes": ["admin"]})
    if json_out:
        print_json(out)
        return
    console.print(f"created tenant {tenant_id}")
    if key:
        console.print(f"admin key (shown once): {out['key']['key']}")


@tenant_app.command("list")
def tenant_list(json_out: JsonOpt = False) -> None:
    rows = call("GET", "/v1/tenants")
    if json_out:
        print_json(rows)
        return
    table("tenants", ["id", "name", "plan", "disabled", "created"],
          [[r["id"], r["name"], r["plan"], r["disabled_at"] or "", r["created_at"]] for r in rows])


@tenant_app.command("show")
def tenant_show(tenant_id: str) -> None:
    print_json(call("GET", f"/v1/tenants/{tenant_id}"))


@tenant_app.command("disable")
def tenant_disable(tenant_id: str) -> None:
    """Every key and token of the tenant stops working at once."""
    call("POST", f"/v1/tenants/{tenant_id}/disable")
    console.print(f"disabled {tenant_id}")


@tenant_app.command("enable")
def tenant_enable(tenant_id: str) -> None:
    call("POST", f"/v1/tenants/{tenant_id}/enable")
    console.print(f"enabled {tenant_id}")


@key_app.command("create")
def key_create(
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="repeatable, e.g. memory:read")],
    tenant: Annotated[str | None, typer.Option(help="another tenant (platform admin only)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API key; the secret is printed once."""
    path = f"/v1/tenants/{tenant}/keys" if tenant else "/v1/keys"
    out = call("POST", path, json={"name": name, "scopes": scope})
    print_json(out) if json_out else console.print(f"{out['id']}  {out['key']}")


@key_app.command("list")
def key_list(json_out: JsonOpt = False) -> None:
    rows = call("GET", "/v1/keys")
    if json_out:
        print_json(rows)
        return
    table("API keys", ["id", "name", "scopes", "last used", "revoked"],
          [[r["id"], r["name"], " ".join(r["scopes"]), r["last_used_at"] or "", r["revoked_at"] or ""]
           for r in rows])


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    call("DELETE", f"/v1/keys/{key_id}")
    console.print(f"revoked {key_id}")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Sign new session tokens with a new key; tokens of the old one stay valid until expiry."""
    out = call("POST", "/v1/signing-keys/rotate")
    console.print(f"active kid {out['kid']} (retired: {', '.join(out['retired']) or 'none'})")


@keys_app.command("list")
def keys_list(json_out: JsonOpt = False) -> None:
    rows = call("GET", "/v1/signing-keys")
    if json_out:
        print_json(rows)
        return
    table("signing keys", ["kid", "created", "retired"],
          [[r["kid"], r["created_at"], r["retired_at"] or "active"] for r in rows])


@token_app.command("mint")
def token_mint(
    persona_hash: Annotated[str, typer.Option()],
    policy_hash: Annotated[str, typer.Option()],
    tokens: Annotated[int, typer.Option(help="token budget")] = 100_000,
    tools_per_min: Annotated[int, typer.Option()] = 60,
    cost_cents: Annotated[int | None, typer.Option()] = None,
    tool: Annotated[list[str] | None, typer.Option("--tool", help="allowed tool, repeatable")] = None,
    memory: Annotated[str, typer.Option(help="none | read | readwrite")] = "none",
    ttl: Annotated[int, typer.Option("--ttl", help="seconds")] = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Mint a session token (EdDSA JWT) for your tenant."""
    budgets = {"tokens": tokens, "tools_per_min": tools_per_min, "cost_cents": cost_cents}
    out = call("POST", "/v1/session/mint", json={
        "persona_hash": persona_hash, "policy_hash": policy_hash, "ttl_s": ttl,
        "budgets": {k: v for k, v in budgets.items() if v is not None},
        "allow": {"tools": tool or [], "memory": memory}})
    print_json(out) if json_out else typer.echo(out["jwt"])


@token_app.command("revoke")
def token_revoke(jti: str) -> None:
    """Revoke a session token by its id (`jti`). Older ids may start with '-': pass such an id
    after `--` (soma token revoke -- -abc…)."""
    call("POST", "/v1/session/revoke", json={"jti": jti})
    console.print(f"revoked {jti}")


def register(app: typer.Typer) -> None:
    for sub, name in ((admin_app, "admin"), (tenant_app, "tenant"), (key_app, "key"),
                      (keys_app, "keys"), (token_app, "token")):
        app.add_typer(sub, name=name)
