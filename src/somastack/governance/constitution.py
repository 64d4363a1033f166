"""The constitution: a versioned JSON document of the rules the platform enforces.

Checksum = SHA3-512 over its canonical JSON; each signer signs `MESSAGE_PREFIX + checksum` with
Ed25519. The trusted signers and the threshold t come from a trust file outside the database,
so whoever can write the database cannot also vouch for what they wrote.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from somastack.errors import Conflict, ConstitutionInvalid, InvalidInput
from somastack.governance.canonical import canonical_json, checksum

MESSAGE_PREFIX = b"somastack-constitution-v1:"


class BudgetCeilings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(default=1_000_000, ge=0)
    tools_per_min: int = Field(default=600, ge=0)
    cost_cents: int = Field(default=100_000, ge=0)


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_tools: list[str] = Field(default_factory=lambda: ["*"], description="'*' = any tool")
    egress_allow: list[str] = Field(default_factory=list, description="hosts tools may reach")
    retention_days: int | None = Field(default=None, ge=1, description="memory retention ceiling")
    budget_ceilings: BudgetCeilings = Field(default_factory=BudgetCeilings)
    session_ttl_max_s: int = Field(default=24 * 3600, ge=60)
    memory_writes: bool = True


class Document(BaseModel):
    """The shape every constitution must have; unknown fields are refused by name."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    rules: Rules = Field(default_factory=Rules)


@dataclass(frozen=True)
class Trust:
    threshold: int
    signers: dict[str, Ed25519PublicKey]


@dataclass(frozen=True)
class Verification:
    checksum: str
    valid_signers: list[str]
    threshold: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and len(self.valid_signers) >= self.threshold


@dataclass(frozen=True)
class Active:
    version: int
    document: dict[str, Any]
    checksum: str
    signers: list[str]


def parse_document(document: Any, field_prefix: str = "document") -> dict[str, Any]:
    """The document as a plain dict, validated; InvalidInput naming the first bad field."""
    try:
        return Document.model_validate(document).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in (field_prefix, *first["loc"]))
        raise InvalidInput(first["msg"], field=where) from exc


def default_document() -> dict[str, Any]:
    return Document(version=1, name="default").model_dump(mode="json")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_b64(key: Ed25519PublicKey) -> str:
    return _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public(b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))


def generate_signer(directory: Path, name: str) -> tuple[Path, str]:
    """A new Ed25519 signer key at directory/<name>.key (mode 0600); returns (path, public b64)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.key"
    if path.exists():
        raise Conflict(f"signer key {path} already exists", field="name")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return path, public_b64(key.public_key())


def load_signer(path: Path) -> tuple[str, Ed25519PrivateKey]:
    """(signer name = file stem, private key) from a PEM file."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 private key", field="key")
    return path.stem, key


def write_trust(path: Path, threshold: int, signers: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"threshold": threshold, "signers": signers}, indent=2) + "\n")


def load_trust(path: Path) -> Trust:
    """The trusted signers; ConstitutionInvalid when the file is missing or malformed."""
    try:
        raw = json.loads(path.read_text())
        signers = {str(k): load_public(v) for k, v in raw["signers"].items()}
        threshold = int(raw["threshold"])
    except FileNotFoundError as exc:
        raise ConstitutionInvalid(f"the trusted signers file {path} is missing") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConstitutionInvalid(f"the trusted signers file {path} is malformed: {exc}") from exc
    if not 1 <= threshold <= len(signers):
        raise ConstitutionInvalid(
            f"{path}: threshold {threshold} must be between 1 and the {len(signers)} signers")
    return Trust(threshold, signers)


def sign(envelope: dict[str, Any], name: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The envelope with this signer's signature over the document's checksum (replacing theirs)."""
    document = parse_document(envelope.get("document"))
    digest = checksum(document)
    others = [s for s in envelope.get("signatures", []) if s.get("signer") != name]
    signature = {"signer": name, "signature": _b64(key.sign(MESSAGE_PREFIX + digest.encode()))}
    return {"document": document, "checksum": digest, "signatures": [*others, signature]}


def verify(document: dict[str, Any], signatures: list[dict[str, Any]], trust: Trust,
           stated_checksum: str | None = None) -> Verification:
    """Count distinct trusted signers whose signature over the document's checksum is valid."""
    digest = checksum(document)
    problems: list[str] = []
    if stated_checksum is not None and stated_checksum != digest:
        problems.append("the checksum does not match the document (it was altered)")
    valid: list[str] = []
    for i, s in enumerate(signatures):
        name = s.get("signer") if isinstance(s, dict) else None
        key = trust.signers.get(str(name))
        if key is None or name in valid:
            continue
        try:
            key.verify(base64.b64decode(str(s.get("signature", "")), validate=True),
                       MESSAGE_PREFIX + digest.encode())
            valid.append(str(name))
        except (InvalidSignature, ValueError):
            problems.append(f"signatures[{i}] by {name!r} is not valid for this document")
    if len(valid) < trust.threshold:
        problems.append(f"{len(valid)} valid signature(s) of the {trust.threshold} required")
    return Verification(digest, valid, trust.threshold, problems)


async def active(conn: psycopg.AsyncConnection) -> dict[str, Any] | None:
    """The stored row of the highest version, or None."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT version, document, checksum, signatures, loaded_by, loaded_at FROM constitutions "
        "ORDER BY version DESC LIMIT 1")
    return await cur.fetchone()


def check_row(row: dict[str, Any] | None, trust: Trust) -> Active:
    """The verified active constitution; ConstitutionInvalid naming the problem otherwise."""
    if row is None:
        raise ConstitutionInvalid("no constitution is loaded (run `soma constitution load FILE`)")
    where = f"constitution v{row['version']}"
    try:
        document = json.loads(row["document"])
        if canonical_json(document).decode() != row["document"]:
            raise ValueError("the stored document is not in canonical form")
        document = parse_document(document)
    except (ValueError, InvalidInput) as exc:
        raise ConstitutionInvalid(f"{where} is unreadable: {exc}") from exc
    if document["version"] != row["version"]:
        raise ConstitutionInvalid(f"{where} says it is version {document['version']}")
    result = verify(document, row["signatures"], trust, stated_checksum=row["checksum"])
    if not result.ok:
        raise ConstitutionInvalid(f"{where} is not trusted: {'; '.join(result.problems)}")
    return Active(row["version"], document, result.checksum, result.valid_signers)


async def store(conn: psycopg.AsyncConnection, envelope: dict[str, Any], trust: Trust,
                loaded_by: str) -> Active:
    """Verify and store a new version (higher than the active one); versions never change."""
    document = parse_document(envelope.get("document"))
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list):
        raise InvalidInput("must be a list of {signer, signature}", field="signatures")
    result = verify(document, signatures, trust)
    if not result.ok:
        raise InvalidInput("; ".join(result.problems), field="signatures")
    await conn.execute("LOCK TABLE constitutions IN EXCLUSIVE MODE")
    current = await active(conn)
    if current is not None and document["version"] <= current["version"]:
        raise Conflict(f"version {document['version']} is not newer than the active version "
                       f"{current['version']}; versions are immutable", field="document.version")
    await conn.execute(
        "INSERT INTO constitutions (version, document, checksum, signatures, loaded_by) "
        "VALUES (%s, %s, %s, %s, %s)",
        (document["version"], canonical_json(document).decode(), result.checksum,
         Jsonb(signatures), loaded_by))
    return Active(document["version"], document, result.checksum, result.valid_signers)
