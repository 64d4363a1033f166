"""The `soma` verbs against the running test server, as a user would type them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def soma(env: dict[str, str], *args: str, ok: bool = True, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "somastack.cli.main", *args], env=env,
                         capture_output=True, text=True, timeout=120, input=stdin)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def test_remember_recall_list_get_link_delete(cli_env: dict[str, str]) -> None:
    a = json.loads(soma(cli_env, "remember", "Grace takes the 7:40 train to work", "-n", "cli",
                        "--tag", "commute", "--meta", "person=grace", "--importance", "0.8",
                        "--json").stdout)
    b = json.loads(soma(cli_env, "remember", "Grace works at the observatory", "-n", "cli",
                        "--json").stdout)
    hits = json.loads(soma(cli_env, "recall", "which train does Grace take", "-n", "cli",
                           "-k", "1", "--json").stdout)
    assert hits["evidence"][0]["memory"]["id"] == a["id"]
    table = soma(cli_env, "recall", "which train does Grace take", "-n", "cli").stdout
    assert "7:40 train" in table
    listed = json.loads(soma(cli_env, "list", "-n", "cli", "--json").stdout)
    assert [m["id"] for m in listed["items"]] == [a["id"], b["id"]]
    got = json.loads(soma(cli_env, "get", a["id"], "--json").stdout)
    assert got["metadata"] == {"person": "grace"} and got["tags"] == ["commute"]
    soma(cli_env, "link", a["id"], b["id"], "--rel", "about")
    links = json.loads(soma(cli_env, "links", a["id"], "--json").stdout)
    assert links["outgoing"][0]["dst"] == b["id"]
    soma(cli_env, "delete", b["id"])
    missing = soma(cli_env, "get", b["id"], ok=False)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_bad_input_is_reported_clearly(cli_env: dict[str, str]) -> None:
    out = soma(cli_env, "remember", "   ", ok=False)
    assert out.returncode == 1 and "content" in out.stderr
    out = soma(cli_env, "remember", "x", "--meta", "novalue", ok=False)
    assert out.returncode == 2 and "key=value" in out.stderr


def test_export_import_roundtrip_keeps_vectors(cli_env: dict[str, str], tmp_path: Path,
                                               make_client, tenant: str, tenant_key) -> None:
    for text in ("one fish", "two fish", "red fish", "blue fish"):
        soma(cli_env, "remember", text, "-n", "sea")
    dump = tmp_path / "dump.jsonl"
    soma(cli_env, "export", "-n", "sea", "-o", str(dump))
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["embedding"]) == 384 for r in rows)
    assert {r["embedder"] for r in rows} == {"all-MiniLM-L6-v2-onnx-int8"}

    other = {**cli_env, "SOMA_TENANT": tenant + "-copy", "SOMA_API_KEY": tenant_key(tenant + "-copy")}
    soma(other, "import", str(dump))
    copy = make_client(tenant + "-copy")
    items = copy.list(namespace="sea", include_embedding=True)["items"]
    assert sorted(i["content"] for i in items) == sorted(r["content"] for r in rows)
    by_content = {r["content"]: r["embedding"] for r in rows}
    for i in items:
        assert i["embedding"] == pytest.approx(by_content[i["content"]], abs=1e-6)

    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({**rows[0], "embedder": "openai:text-embedding-3-small"}) + "\n")
    refused = soma(other, "import", str(foreign), ok=False)
    assert refused.returncode == 1 and "embedder" in refused.stderr
    soma(other, "import", str(foreign), "--reembed", "--restart")


def test_forget_asks_then_deletes(cli_env: dict[str, str]) -> None:
    soma(cli_env, "remember", "temporary note", "-n", "tmp")
    aborted = soma(cli_env, "forget", "-n", "tmp", ok=False, stdin="n\n")
    assert aborted.returncode == 1
    out = json.loads(soma(cli_env, "forget", "-n", "tmp", "--yes", "--json").stdout)
    assert out["deleted"] == 1 and out["receipt_id"]


def test_config_show_masks_secrets(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "SOMA_EMBED_API_KEY": "sk-secret"}
    data = json.loads(soma(env, "config", "show", "--json").stdout)
    assert data["embed_api_key"] == "***" and data["tenant"] == cli_env["SOMA_TENANT"]
