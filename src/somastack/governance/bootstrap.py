"""First start on a fresh machine: a local constitution signer, a 1-of-1 signed default
constitution, the first token-signing key, and a platform admin key printed once.

Nothing here weakens the checks that follow: an existing constitution is never replaced, and the
admin key is created once per database (recorded in governance_state), not whenever none is left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg

from somastack.config import Settings
from somastack.errors import Conflict
from somastack.governance import audit, constitution, keys, signing
from somastack.governance.principal import PLATFORM_ADMIN
from somastack.store import Database

DEFAULT_TENANT = "default"
LOCAL_SIGNER = "local-1"
Announce = Callable[[str], None]


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ensure_trust(settings: Settings) -> None:
    """Create a local signer and a 1-of-1 trust file when no trust file exists yet."""
    if settings.trust_file.exists():
        return
    path = settings.signer_dir / f"{LOCAL_SIGNER}.key"
    if path.exists():
        _, key = constitution.load_signer(path)
        public = constitution.public_b64(key.public_key())
    else:
        _, public = constitution.generate_signer(settings.signer_dir, LOCAL_SIGNER)
    constitution.write_trust(settings.trust_file, 1, {LOCAL_SIGNER: public})


def local_signers(directory: Path, trust: constitution.Trust) -> list[Path]:
    """Signer key files under `directory` whose public key the trust file lists under that name."""
    found = []
    for path in sorted(directory.glob("*.key")) if directory.is_dir() else []:
        name, key = constitution.load_signer(path)
        trusted = trust.signers.get(name)
        if trusted is not None and constitution.public_b64(trusted) == \
                constitution.public_b64(key.public_key()):
            found.append(path)
    return found


async def _ensure_constitution(conn: psycopg.AsyncConnection, settings: Settings,
                               announce: Announce) -> None:
    if await constitution.active(conn) is not None:
        return
    _ensure_trust(settings)
    trust = constitution.load_trust(settings.trust_file)
    envelope: dict[str, object] = {"document": constitution.default_document(), "signatures": []}
    for path in local_signers(settings.signer_dir, trust):
        envelope = constitution.sign(envelope, *constitution.load_signer(path))
    result = constitution.verify(envelope["document"], envelope["signatures"], trust)  # type: ignore[arg-type]
    if not result.ok:
        return  # not enough local signers: the start-up check will say what is missing
    stored = await constitution.store(conn, envelope, trust, loaded_by="bootstrap")
    await audit.append(conn, audit.AuditEvent(
        actor="system:bootstrap", action="constitution.load", resource=f"constitution:v{stored.version}",
        decision="allow", reasons=[f"signed by {', '.join(stored.signers)}"],
        payload={"checksum": stored.checksum}))
    announce(f"constitution v{stored.version} created and signed by {settings.signer_dir}")


def write_admin_key(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


async def create_admin_key(conn: psycopg.AsyncConnection, actor: str) -> str:
    """A new platform admin key of the default tenant (created when missing); plaintext returned."""
    await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                       (DEFAULT_TENANT, "Default tenant"))
    row, plaintext = await keys.create(conn, tenant_id=DEFAULT_TENANT, name="bootstrap-admin",
                                       scopes=[PLATFORM_ADMIN], created_by=actor)
    await audit.append(conn, audit.AuditEvent(
        actor=actor, tenant_id=DEFAULT_TENANT, action="key.create", resource=f"key:{row['id']}",
        decision="allow", payload={"scopes": [PLATFORM_ADMIN], "name": "bootstrap-admin"}))
    return plaintext


async def _ensure_admin(conn: psycopg.AsyncConnection, settings: Settings, announce: Announce) -> None:
    cur = await conn.execute(
        "INSERT INTO governance_state (name, value) VALUES ('bootstrap_admin', '{}'::jsonb) "
        "ON CONFLICT (name) DO NOTHING RETURNING name")
    if await cur.fetchone() is None:
        return
    plaintext = await create_admin_key(conn, "system:bootstrap")
    write_admin_key(settings.admin_key_file, plaintext)
    announce("\n".join([
        "", "  A platform admin key was created. It is shown only this once:", "",
        f"    {plaintext}", "",
        f"  (also saved, mode 0600, to {settings.admin_key_file}; the local `soma` CLI uses it", 
        "   when SOMA_API_KEY is unset)", ""]))


async def bootstrap(db: Database, settings: Settings, announce: Announce = to_stderr) -> None:
    """Make a fresh database usable; a no-op on a database that was bootstrapped before."""
    for step in (_ensure_constitution, _ensure_admin):
        try:
            async with db.system() as conn:
                await step(conn, settings, announce)
        except Conflict:
            continue  # another process bootstrapped the same database at the same moment
    async with db.system() as conn:
        await signing.ensure_active(conn)



