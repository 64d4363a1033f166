"""`soma brain` verbs against the running test server."""

from __future__ import annotations

import json
import subprocess
import sys

from somastack import Client


def soma(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "somastack.cli.main", "brain", *args], env=env,
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode == 0) == ok, out.stderr
    return out


def test_brain_verbs(cli_env: dict[str, str], client: Client) -> None:
    items = client.remember_batch([{"content": "Grace takes the 7:40 train to work."},
                                   {"content": "Grace works at the observatory on the hill."},
                                   {"content": "The observatory closes for repairs in June."}],
                                  namespace="cli")["items"]
    a, b, c = (i["id"] for i in items)
    client.link(a, b)
    bundle = json.loads(soma(cli_env, "evaluate", "Which train does Grace take?", "-n", "cli",
                             "-s", "cli-session", "--budget", "200", "--json").stdout)
    assert bundle["memories"][0]["id"] == a and f"[m:{a}]" in bundle["prompt"]
    shown = soma(cli_env, "evaluate", "Which train does Grace take?", "-n", "cli").stdout
    assert "7:40 train" in shown and "tokens · weights v0" in shown
    fb = json.loads(soma(cli_env, "feedback", bundle["trace_id"], "-u", a, "--reward", "1",
                         "--json").stdout)
    assert fb["version"] == 1
    w = json.loads(soma(cli_env, "weights", "--json").stdout)
    assert w["current"]["version"] == 1 and "bounds" in w
    assert "restored v0 as v2" in soma(cli_env, "rollback", "0").stdout
    assert "404" in soma(cli_env, "rollback", "42", ok=False).stderr
    plan = json.loads(soma(cli_env, "plan", a, "repairs of the observatory", "-n", "cli", "--json").stdout)
    assert plan["paths"][0]["memories"][0]["id"] == a and plan["paths"][0]["memories"][-1]["id"] == c
    assert "path 1" in soma(cli_env, "plan", a, c, "-n", "cli").stdout
