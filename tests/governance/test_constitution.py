"""The constitution: canonical JSON, SHA3-512, t-of-n Ed25519 signatures, fail-closed start."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import free_port
from tests.governance.conftest import audit_rows, run_soma, soma_env

from somastack import Client
from somastack.config import Settings
from somastack.errors import ConstitutionInvalid
from somastack.governance import constitution as c
from somastack.governance.canonical import canonical_json, checksum
from somastack.governance.runtime import preflight

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


def test_rfc8785_number_and_key_order_vectors() -> None:
    numbers = {"numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001]}
    assert canonical_json(numbers) == b'{"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}'
    keys = {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7}
    order = [k for k in json.loads(canonical_json(keys))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@given(JSON)
def test_canonical_json_is_a_fixed_point_and_round_trips(value: object) -> None:
    once = canonical_json(value)
    parsed = json.loads(once)
    assert canonical_json(parsed) == once
    if isinstance(value, float) and math.isfinite(value):
        assert parsed == value


@given(st.dictionaries(st.text(max_size=4), st.integers(), max_size=6))
def test_checksum_ignores_key_order(d: dict[str, int]) -> None:
    assert checksum(d) == checksum(dict(reversed(list(d.items())))) and len(checksum(d)) == 128


@pytest.fixture
def signers(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    return {n: c.generate_signer(tmp_path / "keys", n) for n in ("alice", "bob", "carol")}


def trust_of(signers: dict[str, tuple[Path, str]], t: int) -> c.Trust:
    return c.Trust(t, {n: c.load_public(pub) for n, (_, pub) in signers.items()})


def signed_by(*paths: Path, document: dict | None = None) -> dict:
    env: dict = {"document": document or c.default_document(), "signatures": []}
    for p in paths:
        env = c.sign(env, *c.load_signer(p))
    return env


def test_t_of_n_counts_distinct_trusted_valid_signatures(signers, tmp_path: Path) -> None:
    trust = trust_of(signers, 2)
    one = signed_by(signers["alice"][0])
    result = c.verify(one["document"], one["signatures"], trust)
    assert not result.ok and "1 valid signature(s) of the 2 required" in result.problems
    dup = {**one, "signatures": one["signatures"] * 2}
    assert not c.verify(dup["document"], dup["signatures"], trust).ok
    outsider, _ = c.generate_signer(tmp_path / "other", "mallory")
    foreign = signed_by(signers["alice"][0], outsider)
    assert c.verify(foreign["document"], foreign["signatures"], trust).valid_signers == ["alice"]
    two = signed_by(signers["alice"][0], signers["carol"][0])
    assert c.verify(two["document"], two["signatures"], trust, two["checksum"]).ok
    altered = {**two["document"], "name": "evil"}
    result = c.verify(altered, two["signatures"], trust, two["checksum"])
    assert not result.ok and any("altered" in p for p in result.problems)


def test_bad_documents_name_the_field() -> None:
    for doc, field in (({"version": 0, "name": "x"}, "document.version"),
                       ({"version": 1, "name": "x", "rules": {"colour": 1}}, "document.rules.colour"),
                       ({"version": 1, "name": "x", "rules": {"budget_ceilings": {"tokens": -1}}},
                        "document.rules.budget_ceilings.tokens")):
        with pytest.raises(Exception) as e:
            c.parse_document(doc)
        assert getattr(e.value, "field", None) == field


@pytest.mark.asyncio
async def test_first_start_bootstraps_then_refuses_tampering(fresh_settings: Settings,
                                                             fresh_url: str) -> None:
    active = await preflight(fresh_settings, announce=lambda _m: None)
    assert active.version == 1 and active.signers == ["local-1"]
    assert json.loads(fresh_settings.trust_file.read_text())["threshold"] == 1
    assert (fresh_settings.signer_dir / "local-1.key").stat().st_mode & 0o777 == 0o600
    assert (await preflight(fresh_settings, announce=lambda _m: None)).checksum == active.checksum
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable"):
            conn.execute("UPDATE constitutions SET document = replace(document, 'default', 'evil')")
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE constitutions SET document = replace(document, '\"memory_writes\":true', "
                     "'\"memory_writes\":false')")
    with pytest.raises(ConstitutionInvalid, match="altered"):
        await preflight(fresh_settings, announce=lambda _m: None)


def serve(settings: Settings) -> tuple[int, str]:
    env = soma_env(settings, SOMA_PORT=str(free_port()))
    out = run_soma(env, "serve", timeout=120)
    return out.returncode, " ".join((out.stdout + out.stderr).split())  # undo Rich's wrapping


@pytest.mark.asyncio
async def test_serve_exits_non_zero_on_an_under_signed_constitution(fresh_settings: Settings,
                                                                    tmp_path: Path) -> None:
    await preflight(fresh_settings, announce=lambda _m: None)
    trust = json.loads(fresh_settings.trust_file.read_text())
    _, public = c.generate_signer(tmp_path / "elsewhere", "bob")
    c.write_trust(fresh_settings.trust_file, 2, {**trust["signers"], "bob": public})
    code, text = serve(fresh_settings)
    assert code == 1, text
    assert "refusing to start" in text and "1 valid signature(s) of the 2 required" in text


def test_serve_exits_non_zero_without_a_trusted_constitution(fresh_settings: Settings,
                                                             tmp_path: Path) -> None:
    _, public = c.generate_signer(tmp_path / "elsewhere", "bob")
    c.write_trust(fresh_settings.trust_file, 1, {"bob": public})  # no local signer can sign
    code, text = serve(fresh_settings)
    assert code == 1 and "no constitution is loaded" in text, text


def test_load_new_version_needs_t_signatures_and_is_audited(
        fresh_admin: Client, fresh_settings: Settings, fresh_url: str, tmp_path: Path) -> None:
    local = fresh_settings.signer_dir / "local-1.key"
    first = fresh_admin.request("GET", "/v1/constitution")
    assert first["version"] == 1 and fresh_admin.request(
        "GET", "/v1/constitution/checksum")["checksum"] == first["checksum"]
    doc = {**first["document"], "version": 2, "rules": {**first["document"]["rules"],
                                                       "allowed_tools": ["search"]}}
    unsigned = fresh_admin.http.post("/v1/constitution", json={"document": doc, "signatures": []})
    assert unsigned.status_code == 422 and unsigned.json()["field"] == "signatures"
    outsider, _ = c.generate_signer(tmp_path / "x", "local-1")  # right name, wrong key
    forged = fresh_admin.http.post("/v1/constitution", json=signed_by(outsider, document=doc))
    assert forged.status_code == 422 and "not valid" in forged.json()["detail"]
    stale = fresh_admin.http.post("/v1/constitution",
                                  json=signed_by(local, document={**doc, "version": 1}))
    assert stale.status_code == 409 and stale.json()["field"] == "document.version"
    loaded = fresh_admin.request("POST", "/v1/constitution", json=signed_by(local, document=doc))
    assert loaded["version"] == 2
    assert fresh_admin.request("GET", "/v1/constitution")["document"]["rules"]["allowed_tools"] == [
        "search"]
    with psycopg.connect(fresh_url) as conn:
        assert ("constitution.load", "allow", '["signed by local-1"]') in audit_rows(
            conn, action="constitution.load")
        assert conn.execute("SELECT count(*) FROM constitutions").fetchone() == (2,)


def test_constitution_cli_keygen_sign_verify_load_show(fresh_server: str, fresh_settings: Settings,
                                                       tmp_path: Path) -> None:
    env = soma_env(fresh_settings)
    out = run_soma(env, "constitution", "keygen", "dave", "--dir", str(tmp_path / "k"))
    assert out.returncode == 0 and "trust file entry" in out.stdout
    doc = tmp_path / "v2.json"
    doc.write_text(json.dumps({"version": 2, "name": "second"}))
    out = run_soma(env, "constitution", "verify", str(doc))
    assert out.returncode == 1 and "0 valid signature(s) of the 1 required" in " ".join(out.stderr.split())
    out = run_soma(env, "constitution", "sign", str(doc), "--key",
                   str(fresh_settings.signer_dir / "local-1.key"))
    assert out.returncode == 0, out.stderr
    assert run_soma(env, "constitution", "verify", str(doc)).returncode == 0
    out = run_soma(env, "constitution", "load", str(doc))
    assert out.returncode == 0 and "v2 active" in out.stdout, out.stderr
    out = run_soma(env, "constitution", "show", "--json")
    assert json.loads(out.stdout)["document"]["name"] == "second"


@pytest.fixture
def watched_server(fresh_settings: Settings, request: pytest.FixtureRequest) -> str:
    fresh_settings.constitution_check_s = 0.2
    return str(request.getfixturevalue("fresh_server"))


def test_running_server_fails_closed_when_the_constitution_is_tampered(
        watched_server: str, fresh_settings: Settings, fresh_url: str) -> None:
    key = fresh_settings.admin_key_file.read_text().strip()
    with Client(watched_server, api_key=key) as admin:
        assert admin.http.get("/v1/constitution").status_code == 200
        with psycopg.connect(fresh_url, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE constitutions SET checksum = repeat('0', 128)")
        deadline = time.monotonic() + 10
        while (resp := admin.http.get("/v1/constitution")).status_code == 200:
            assert time.monotonic() < deadline, "the server kept serving a tampered constitution"
            time.sleep(0.1)
        assert resp.status_code == 503 and resp.json()["type"].endswith("constitution-invalid")
        assert "altered" in resp.json()["detail"]
